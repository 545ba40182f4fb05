"""A person's own commands: /start, /help, /stats, /undo, /forget, /export; and errors."""

from __future__ import annotations

import asyncio
import logging

from telegram import Update
from telegram.error import BadRequest, Forbidden

from bot import render
from bot.charts import learning_curve_png
from bot.telegram_adapter.admin import stats_of_everyone
from bot.telegram_adapter.context import (
    TasteContext,
    is_admin,
    person_of,
    private_only,
)
from bot.telegram_adapter.keyboards import (
    forget_keyboard,
    score_keyboard,
)

log = logging.getLogger(__name__)


async def on_start(update: Update, context: TasteContext) -> None:
    """/start: what to do, and how far the person is from a first model."""
    assert update.effective_message is not None
    stats = await context.services.people.stats(person_of(update), include_totals=False)
    await update.effective_message.reply_text(
        render.onboarding_text(
            context.settings.head_min_votes,
            stats.counts.votes,
            stats.active is not None,
            _admin_help(update, context),
        )
    )


async def on_help(update: Update, context: TasteContext) -> None:
    """/help."""
    assert update.effective_message is not None
    await update.effective_message.reply_text(
        render.help_text(context.settings.head_min_votes, _admin_help(update, context))
    )


def _admin_help(update: Update, context: TasteContext) -> str:
    return render.TELEGRAM_ADMIN_HELP if is_admin(update, context) else ""


async def cmd_stats(update: Update, context: TasteContext) -> None:
    """/stats: counts, model and learning-curve chart; `/stats all` (admins): every person."""
    message = update.effective_message
    assert message is not None
    if context.args == ["all"]:
        await stats_of_everyone(update, context)
        return
    if await private_only(update, "/stats"):
        return
    person = person_of(update)
    stats = await context.services.people.stats(person, include_totals=is_admin(update, context))
    curve = await context.services.people.learning_curve(person)
    caption = render.curve_caption(stats, curve, context.settings.head_min_votes)
    if not curve.versions and not curve.votes:
        await message.reply_text(caption)
        return
    png = await asyncio.to_thread(learning_curve_png, curve)
    await message.reply_photo(png, caption=caption)


async def cmd_undo(update: Update, context: TasteContext) -> None:
    """/undo: remove the person's last vote."""
    message = update.effective_message
    assert message is not None
    if await private_only(update, "/undo"):
        return
    undone = await context.services.votes.undo_last_vote(person_of(update))
    await message.reply_text(render.undo_text(None if undone is None else undone.vote))
    # Untick the buttons under that image. Not a group's (they are everyone's and never show
    # a choice), nor an album's shared rows (the Bot API cannot read them back to untick one).
    if (
        undone is None
        or not undone.own_buttons
        or undone.submission.chat_id != str(message.chat_id)
    ):
        return
    submission = undone.submission
    try:
        await context.bot.edit_message_reply_markup(
            chat_id=int(submission.chat_id),
            message_id=int(submission.reply_message_id),  # type: ignore[arg-type]
            reply_markup=score_keyboard(submission.id),
        )
    except BadRequest as error:
        log.debug("could not untick buttons: %s", error)


async def cmd_forget(update: Update, context: TasteContext) -> None:
    """/forget: ask for confirmation, then delete everything of the person."""
    assert update.effective_message is not None
    if await private_only(update, "/forget"):
        return
    await update.effective_message.reply_text(
        render.forget_prompt(), reply_markup=forget_keyboard()
    )


async def cmd_export(update: Update, context: TasteContext) -> None:
    """/export: the person's own data as a JSON file."""
    message = update.effective_message
    assert message is not None
    if await private_only(update, "/export"):
        return
    export = await context.services.people.export(person_of(update))
    await message.reply_document(
        export.data, filename=export.filename, caption=render.export_caption(export)
    )


async def on_unknown_command(update: Update, context: TasteContext) -> None:
    """A /command this bot does not have."""
    message = update.effective_message
    assert message is not None and message.text is not None
    command = message.text.split(maxsplit=1)[0].split("@")[0]
    await message.reply_text(render.unknown_command(command))


async def on_sticker(update: Update, context: TasteContext) -> None:
    """A sticker: not something to score."""
    assert update.effective_message is not None
    await update.effective_message.reply_text(render.STICKER)


async def on_other_message(update: Update, context: TasteContext) -> None:
    """Text, a voice note, a location, anything else in a private chat: say what to send."""
    assert update.effective_message is not None
    await update.effective_message.reply_text(render.SEND_AN_IMAGE)


async def on_error(update: object, context: TasteContext) -> None:
    """Log the details; tell the person one sentence."""
    log.error("error while handling an update", exc_info=context.error)
    if not isinstance(update, Update):
        return
    try:
        if update.callback_query is not None:
            await update.callback_query.answer(render.TAP_AGAIN)
        elif update.effective_message is not None:
            await update.effective_message.reply_text(render.SOMETHING_WRONG)
    except (BadRequest, Forbidden):
        log.debug("could not tell the person about the error", exc_info=True)
