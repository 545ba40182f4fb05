"""Telegram handlers: parse the update, make one core call, render the answer."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field

from telegram import Document, Message, PhotoSize, Update
from telegram.constants import ChatType
from telegram.error import BadRequest, Forbidden
from telegram.ext import Application, CallbackContext, ExtBot

from bot import render
from bot.charts import learning_curve_png
from bot.core import (
    AlreadyAnswered,
    IncomingImage,
    Person,
    Refused,
    Scored,
    ScoreOutcome,
    TasteService,
)
from bot.settings import Settings
from bot.telegram_adapter.callback_data import (
    FORGET_YES,
    decode_submission_action,
    decode_vote,
    is_id,
)
from bot.telegram_adapter.keyboards import (
    album_keyboard,
    forget_keyboard,
    mark_choice,
    score_keyboard,
)

log = logging.getLogger(__name__)

PLATFORM = "telegram"


@dataclass
class Album:
    """Images of one album (one media_group_id) that have arrived so far."""

    messages: list[Message] = field(default_factory=list)
    last_arrival: float = 0.0


@dataclass
class BotState:
    """Application.bot_data: the services handlers use, set in post_init."""

    settings: Settings | None = None
    service: TasteService | None = None
    albums: dict[tuple[int, str], Album] = field(default_factory=dict)


# ExtBot[int]: the rate limiter's per-call argument type (AIORateLimiter: max_retries).
class TasteContext(CallbackContext[ExtBot[int], dict, dict, BotState]):  # type: ignore[type-arg]
    @property
    def service(self) -> TasteService:
        assert self.bot_data.service is not None, "service is set in post_init"
        return self.bot_data.service

    @property
    def settings(self) -> Settings:
        assert self.bot_data.settings is not None, "settings are set before the app starts"
        return self.bot_data.settings


TasteApplication = Application[ExtBot[int], TasteContext, dict, dict, BotState, None]  # type: ignore[type-arg]


def _person(update: Update) -> Person:
    user = update.effective_user
    assert user is not None
    return Person(PLATFORM, str(user.id), user.full_name)


def _in_group(update: Update) -> bool:
    return update.effective_chat is not None and update.effective_chat.type != ChatType.PRIVATE


def _is_admin(update: Update, context: TasteContext) -> bool:
    return (
        update.effective_user is not None and update.effective_user.id in context.settings.admin_ids
    )


async def _private_only(update: Update, command: str) -> bool:
    """Commands about a person's own data are answered in private chats only, so a group
    never sees one member's votes, scores or files."""
    if not _in_group(update):
        return False
    assert update.effective_message is not None
    await update.effective_message.reply_text(
        f"{command} is about your own data; send it to me in a private chat."
    )
    return True


# -- images -----------------------------------------------------------------


def _incoming(message: Message, person: Person) -> tuple[IncomingImage, PhotoSize | Document]:
    media: PhotoSize | Document
    if message.photo:
        media = message.photo[-1]  # sizes come smallest first
    else:
        assert message.document is not None
        media = message.document
    incoming = IncomingImage(
        person=person,
        chat_id=str(message.chat_id),
        message_id=str(message.message_id),
        caption=message.caption,
        claimed_bytes=media.file_size,
    )
    return incoming, media


async def _score(message: Message, person: Person, context: TasteContext) -> ScoreOutcome:
    incoming, media = _incoming(message, person)

    async def download() -> bytes:
        telegram_file = await context.bot.get_file(media.file_id)
        return bytes(await telegram_file.download_as_bytearray())

    return await context.service.score_image(incoming, download)


async def on_image(update: Update, context: TasteContext) -> None:
    """A photo (largest size) or an image sent as a file → score + vote buttons."""
    message = update.effective_message
    assert message is not None
    if message.media_group_id and not _in_group(update):
        await _collect_album(message, _person(update), context)
        return
    outcome = await _score(message, _person(update), context)
    if isinstance(outcome, AlreadyAnswered):
        return  # a redelivered update we already answered
    if isinstance(outcome, Refused):
        await message.reply_text(outcome.message, do_quote=True)
        return
    group = _in_group(update)
    # Quoted: with several images in flight, each score sits under its own image.
    reply = await message.reply_text(
        render.GROUP_PROMPT if group else render.score_text(outcome),
        reply_markup=score_keyboard(outcome.vote_target, group=group, chosen=outcome.rated_before),
        do_quote=True,
    )
    await context.service.reply_sent(outcome.submission_id, str(reply.message_id))


async def _collect_album(message: Message, person: Person, context: TasteContext) -> None:
    """Albums arrive as one update per image. The first image's handler waits until no
    more have arrived for ALBUM_WAIT_SECONDS, then answers the whole album once."""
    loop = asyncio.get_running_loop()
    assert message.media_group_id is not None
    key = (message.chat_id, message.media_group_id)
    albums = context.bot_data.albums
    first = key not in albums
    album = albums.setdefault(key, Album())
    album.messages.append(message)
    album.last_arrival = loop.time()
    if not first:
        return
    wait = context.settings.album_wait_seconds
    while (quiet := loop.time() - album.last_arrival) < wait:
        await asyncio.sleep(wait - quiet)
    del albums[key]
    messages = sorted(album.messages, key=lambda m: m.message_id)
    outcomes = await asyncio.gather(*(_score(m, person, context) for m in messages))
    if all(isinstance(o, AlreadyAnswered) for o in outcomes):
        return
    scored = [(pos, o) for pos, o in enumerate(outcomes, 1) if isinstance(o, Scored)]
    scored.sort(key=lambda item: item[1].score, reverse=True)
    lines = [render.album_text(scored)] if scored else []
    lines += [
        f"Image {pos}: {o.message}" for pos, o in enumerate(outcomes, 1) if isinstance(o, Refused)
    ]
    reply = await messages[0].reply_text(
        "\n".join(lines),
        reply_markup=album_keyboard([(o.vote_target, o.rated_before) for _, o in scored])
        if scored
        else None,
        do_quote=True,
    )
    for _, o in scored:
        await context.service.reply_sent(o.submission_id, str(reply.message_id))


async def on_other_document(update: Update, context: TasteContext) -> None:
    """A file that does not claim to be an image: refused without downloading it."""
    assert update.effective_message is not None
    await update.effective_message.reply_text(
        "That file is not an image; send a photo or an image file (JPEG, PNG, WebP, GIF).",
        do_quote=True,
    )


# -- buttons ------------------------------------------------------------------


async def on_vote(update: Update, context: TasteContext) -> None:
    """A vote button: commit the vote, answer the tap, show the choice."""
    query = update.callback_query
    assert query is not None
    parsed = decode_vote(query.data)
    if parsed is None:
        await query.answer("This button is not mine.")
        return
    submission_id, vote = parsed
    outcome = await context.service.record_vote(_person(update), submission_id, vote)
    group = _in_group(update)
    if outcome is None:
        text = "I no longer know this image."
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
        else await context.service.score_for(_person(update), submission_id)
    )
    text = "I no longer know this image." if scored is None else render.score_text(scored)
    await query.answer(text[:200], show_alert=True)


async def on_similar(update: Update, context: TasteContext) -> None:
    """🔍 Show similar: the tapper's own liked images closest to this one, sent privately."""
    query = update.callback_query
    assert query is not None and update.effective_user is not None
    submission_id = decode_submission_action(query.data, "s")
    found = (
        None
        if submission_id is None
        else await context.service.similar_liked_images(_person(update), submission_id)
    )
    if not found:
        await query.answer(
            "I no longer know this image."
            if found is None
            else "None of the images you liked (and I kept) is close to this one yet."
        )
        return
    await query.answer(f"Sending the {len(found)} closest images you liked.")
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
        await query.edit_message_text("Nothing was deleted.")
        return
    report = await context.service.forget(_person(update))
    await query.edit_message_text(render.forget_report(report))


# -- commands -----------------------------------------------------------------


async def on_start(update: Update, context: TasteContext) -> None:
    """/start: what to do, and how far the person is from a first model."""
    assert update.effective_message is not None
    stats = await context.service.stats(_person(update), include_totals=False)
    await update.effective_message.reply_text(
        render.onboarding_text(
            context.settings.head_min_votes, stats.counts.votes, stats.active is not None
        )
    )


async def on_help(update: Update, context: TasteContext) -> None:
    """/help."""
    assert update.effective_message is not None
    await update.effective_message.reply_text(render.help_text(context.settings.head_min_votes))


async def cmd_stats(update: Update, context: TasteContext) -> None:
    """/stats: counts, model and learning-curve chart; `/stats all` (admins): every person."""
    message = update.effective_message
    assert message is not None
    if context.args == ["all"]:
        if not _is_admin(update, context):
            await message.reply_text("Only the bot's admins can use /stats all.")
            return
        await message.reply_text(render.summaries_text(await context.service.summaries()))
        return
    if await _private_only(update, "/stats"):
        return
    person = _person(update)
    stats = await context.service.stats(person, include_totals=_is_admin(update, context))
    curve = await context.service.learning_curve(person)
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
    if await _private_only(update, "/undo"):
        return
    undone = await context.service.undo_last_vote(_person(update))
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
    if await _private_only(update, "/forget"):
        return
    await update.effective_message.reply_text(
        render.forget_prompt(), reply_markup=forget_keyboard()
    )


async def cmd_export(update: Update, context: TasteContext) -> None:
    """/export: the person's own data as a JSON file."""
    message = update.effective_message
    assert message is not None
    if await _private_only(update, "/export"):
        return
    rows = await context.service.export(_person(update))
    data = json.dumps({"submissions": rows}, ensure_ascii=False, indent=1).encode()
    await message.reply_document(
        data, filename="tastebot-export.json", caption=f"Your data: {len(rows)} images."
    )


async def cmd_retrain(update: Update, context: TasteContext) -> None:
    """/retrain [all|<user id>] (admins): retrain now."""
    message = update.effective_message
    assert message is not None
    if not _is_admin(update, context):
        await message.reply_text("Only the bot's admins can use /retrain.")
        return
    target = (context.args or ["all"])[0]
    if target in ("full", "cancel"):
        await _retrain_backbone(message, context, cancel=target == "cancel")
        return
    if target == "all":
        # One message, edited as people are retrained, then replaced by the results.
        status = await message.reply_text("Retraining everyone with new votes…")
        last_edit = 0.0

        async def progress(done: int, total: int) -> None:
            nonlocal last_edit
            now = asyncio.get_running_loop().time()
            if done < total and now - last_edit >= 2.0:  # stay far below Telegram's edit limits
                last_edit = now
                await status.edit_text(f"Retraining… {done} of {total} people done.")

        outcomes = await context.service.retrain_due_heads(
            min_new_votes=1, trigger="admin", on_progress=progress
        )
        await status.edit_text(render.retrain_text(outcomes))
        return
    outcome = await context.service.retrain_person(PLATFORM, target, trigger="admin")
    await message.reply_text(
        f"I don't know user {target}." if outcome is None else render.retrain_text([outcome])
    )


async def _retrain_backbone(message: Message, context: TasteContext, *, cancel: bool) -> None:
    """/retrain full: fine-tune CLIP, with progress in one edited message; /retrain cancel."""
    tuner = context.service.backbone
    assert tuner is not None
    if cancel:
        await message.reply_text(
            "Cancelling the fine-tune…" if tuner.cancel() else "No fine-tune is running."
        )
        return
    if tuner.running:
        await message.reply_text("A fine-tune is already running; /retrain cancel stops it.")
        return
    status = await message.reply_text("Starting a fine-tune of CLIP…")
    shown = status.text

    async def progress(text: str) -> None:
        nonlocal shown
        if text != shown:
            shown = text
            try:
                await status.edit_text(text)
            except BadRequest as error:  # e.g. edited too often: the next update comes soon
                log.debug("progress edit failed: %s", error)

    outcome = await tuner.run("admin", on_progress=progress)
    await progress(render.backbone_text(outcome))


async def cmd_models(update: Update, context: TasteContext) -> None:
    """/models <user id> (admins): every model version of a person, with metrics."""
    message = update.effective_message
    assert message is not None
    if not _is_admin(update, context):
        await message.reply_text("Only the bot's admins can use /models.")
        return
    if len(context.args or []) != 1:
        await message.reply_text("Usage: /models <telegram user id>")
        return
    target = context.args[0]  # type: ignore[index]
    await message.reply_text(
        render.models_text(target, await context.service.models_of(PLATFORM, target))
    )


async def cmd_rollback(update: Update, context: TasteContext) -> None:
    """/rollback <user id> <version> (admins): make an earlier model the active one."""
    message = update.effective_message
    assert message is not None
    if not _is_admin(update, context):
        await message.reply_text("Only the bot's admins can use /rollback.")
        return
    args = context.args or []
    # "3" or "v3", as /models lists them; ASCII digits only ("²" is a digit to isdigit).
    version_text = args[1].lower().removeprefix("v") if len(args) == 2 else ""
    if not is_id(version_text):
        await message.reply_text("Usage: /rollback <telegram user id> <version>")
        return
    version = int(version_text)
    outcome = await context.service.rollback(PLATFORM, args[0], version)
    await message.reply_text(
        render.rollback_text(args[0], version, outcome, context.settings.head_files_kept)
    )


async def on_text(update: Update, context: TasteContext) -> None:
    """Plain text in a private chat: point at what the bot does."""
    assert update.effective_message is not None
    await update.effective_message.reply_text("Send me an image and I'll score it for you. /help")


async def on_error(update: object, context: TasteContext) -> None:
    """Log the details; tell the person one sentence."""
    log.error("error while handling an update", exc_info=context.error)
    if not isinstance(update, Update):
        return
    try:
        if update.callback_query is not None:
            await update.callback_query.answer("Something went wrong; please tap again.")
        elif update.effective_message is not None:
            await update.effective_message.reply_text(
                "Something went wrong on my side; please try again."
            )
    except (BadRequest, Forbidden):
        log.debug("could not tell the person about the error", exc_info=True)
