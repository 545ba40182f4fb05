"""Inline buttons: votes, "my score" and "show similar" in groups, /forget's confirmation."""

from __future__ import annotations

import asyncio
import logging

from telegram import Message, Update
from telegram.error import BadRequest

from bot import metrics, render
from bot.telegram_adapter.callback_data import (
    FORGET_YES,
    decode_submission_action,
    decode_vote,
)
from bot.telegram_adapter.context import (
    PLATFORM,
    TasteContext,
    in_group,
    person_of,
)
from bot.telegram_adapter.keyboards import (
    mark_choice,
)

log = logging.getLogger(__name__)


async def on_vote(update: Update, context: TasteContext) -> None:
    """A vote button: commit the vote, answer the tap, show the choice."""
    query = update.callback_query
    assert query is not None
    parsed = decode_vote(query.data)
    if parsed is None:
        await query.answer("This button is not mine.")
        return
    submission_id, vote = parsed
    outcome = await context.services.votes.record_vote(person_of(update), submission_id, vote)
    metrics.count_vote(PLATFORM, outcome)
    group = in_group(update)
    if outcome is None:
        text = render.UNKNOWN_IMAGE
    else:
        text = render.vote_ack(vote, outcome.changed) + (" (only you see this)" if group else "")
    # Answer every callback query, or the client keeps spinning; the vote is already committed.
    try:
        await query.answer(text)
    except BadRequest as error:  # a redelivered update: the query expired, the vote is saved
        log.info("late callback answer failed: %s", error)
    # In a group the buttons are everyone's: ticking one would tell the others your vote.
    if outcome is None or not outcome.changed or group or not isinstance(query.message, Message):
        return
    markup = query.message.reply_markup
    if markup is not None:
        try:
            await query.edit_message_reply_markup(mark_choice(markup, submission_id, vote))
        except BadRequest as error:  # "message is not modified" after a race between taps
            log.debug("could not update buttons: %s", error)


async def on_my_score(update: Update, context: TasteContext) -> None:
    """🔒 My score (groups): the tapper's own score, in an alert only they see."""
    query = update.callback_query
    assert query is not None
    submission_id = decode_submission_action(query.data, "m")
    scored = (
        None
        if submission_id is None
        else await context.services.scoring.score_for(person_of(update), submission_id)
    )
    text = render.UNKNOWN_IMAGE if scored is None else render.score_text(scored)
    await query.answer(text[:200], show_alert=True)


async def on_similar(update: Update, context: TasteContext) -> None:
    """🔍 Show similar: the tapper's own liked images closest to this one, sent privately."""
    query = update.callback_query
    assert query is not None and update.effective_user is not None
    submission_id = decode_submission_action(query.data, "s")
    found = (
        None
        if submission_id is None
        else await context.services.scoring.similar_liked_images(person_of(update), submission_id)
    )
    if not found:
        await query.answer(
            render.UNKNOWN_IMAGE
            if found is None
            else "None of the images you liked (and I kept) is close to this one yet."
        )
        return
    await query.answer(render.sending_similar(len(found)))
    for path, similarity in found:
        data = await asyncio.to_thread(path.read_bytes)
        await context.bot.send_photo(
            update.effective_user.id, data, caption=f"You liked this · similarity {similarity:.2f}"
        )


async def on_forget_confirm(update: Update, context: TasteContext) -> None:
    """The /forget confirmation buttons."""
    query = update.callback_query
    assert query is not None
    await query.answer()
    if query.data != FORGET_YES:
        await query.edit_message_text(render.NOTHING_DELETED)
        return
    report = await context.services.people.forget(person_of(update))
    await query.edit_message_text(render.forget_report(report))
