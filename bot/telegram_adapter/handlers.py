"""Telegram handlers: parse the update, make one core call, render the answer."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from telegram import (
    Document,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    PhotoSize,
    Update,
)
from telegram.error import BadRequest
from telegram.ext import Application, CallbackContext, ExtBot

from bot import render
from bot.core import AlreadyAnswered, IncomingImage, Person, Refused, TasteService
from bot.settings import Settings
from bot.telegram_adapter.callback_data import decode_vote, encode_vote
from storage.records import Vote

log = logging.getLogger(__name__)

PLATFORM = "telegram"


@dataclass
class BotState:
    """Application.bot_data: the services handlers use, set in post_init."""

    settings: Settings | None = None
    service: TasteService | None = None
    scheduler: AsyncIOScheduler | None = None


class TasteContext(CallbackContext[ExtBot[None], dict, dict, BotState]):  # type: ignore[type-arg]
    @property
    def service(self) -> TasteService:
        assert self.bot_data.service is not None, "service is set in post_init"
        return self.bot_data.service

    @property
    def settings(self) -> Settings:
        assert self.bot_data.settings is not None, "settings are set before the app starts"
        return self.bot_data.settings


TasteApplication = Application[ExtBot[None], TasteContext, dict, dict, BotState, None]  # type: ignore[type-arg]


def vote_keyboard(submission_id: int, chosen: Vote | None = None) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton(
                    ("✓ " if vote is chosen else "") + render.VOTE_LABELS[vote],
                    callback_data=encode_vote(submission_id, vote),
                )
                for vote in render.VOTE_ORDER
            ]
        ]
    )


def _person(update: Update) -> Person:
    user = update.effective_user
    assert user is not None
    return Person(PLATFORM, str(user.id), user.full_name)


async def on_help(update: Update, context: TasteContext) -> None:
    """/start and /help."""
    assert update.effective_message is not None
    await update.effective_message.reply_text(render.help_text(context.settings.head_min_votes))


async def on_image(update: Update, context: TasteContext) -> None:
    """A photo (largest size) or an image sent as a file → score + vote buttons."""
    message = update.effective_message
    assert message is not None and update.effective_user is not None
    media: PhotoSize | Document
    if message.photo:
        media = message.photo[-1]  # sizes come smallest first
    else:
        assert message.document is not None
        media = message.document
    incoming = IncomingImage(
        person=_person(update),
        chat_id=str(message.chat_id),
        message_id=str(message.message_id),
        caption=message.caption,
        claimed_bytes=media.file_size,
    )

    async def download() -> bytes:
        telegram_file = await context.bot.get_file(media.file_id)
        return bytes(await telegram_file.download_as_bytearray())

    outcome = await context.service.score_image(incoming, download)
    if isinstance(outcome, AlreadyAnswered):
        return  # a redelivered update we already answered
    if isinstance(outcome, Refused):
        await message.reply_text(outcome.message, do_quote=True)
        return
    # Quoted: with several images in flight, each score sits under its own image.
    reply = await message.reply_text(
        render.score_text(outcome),
        reply_markup=vote_keyboard(outcome.submission_id),
        do_quote=True,
    )
    await context.service.reply_sent(outcome.submission_id, str(reply.message_id))


async def on_other_document(update: Update, context: TasteContext) -> None:
    """A file that does not claim to be an image: refused without downloading it."""
    assert update.effective_message is not None
    await update.effective_message.reply_text(
        "That file is not an image; send a photo or an image file (JPEG, PNG, WebP, GIF).",
        do_quote=True,
    )


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
    # Answer every callback query, or the client keeps spinning; the vote is already committed.
    try:
        await query.answer(
            "I no longer know this image."
            if outcome is None
            else render.vote_ack(vote, outcome.changed)
        )
    except BadRequest as error:  # a redelivered update: the query expired, the vote is saved
        log.info("late callback answer failed: %s", error)
    if outcome is None:
        return
    if outcome.changed and isinstance(query.message, Message):
        try:
            await query.edit_message_reply_markup(vote_keyboard(submission_id, chosen=vote))
        except BadRequest as error:  # "message is not modified" after a race between taps
            log.debug("could not update buttons: %s", error)


async def cmd_stats(update: Update, context: TasteContext) -> None:
    """/stats: the person's counts and model; totals for admins."""
    assert update.effective_message is not None and update.effective_user is not None
    is_admin = update.effective_user.id in context.settings.admin_ids
    stats = await context.service.stats(_person(update), include_totals=is_admin)
    await update.effective_message.reply_text(
        render.stats_text(stats, context.settings.head_min_votes)
    )


async def cmd_retrain(update: Update, context: TasteContext) -> None:
    """/retrain (admins): retrain everyone with new votes now."""
    message = update.effective_message
    assert message is not None and update.effective_user is not None
    if update.effective_user.id not in context.settings.admin_ids:
        await message.reply_text("Only the bot's admins can use /retrain.")
        return
    outcomes = await context.service.retrain_due_heads(min_new_votes=1, trigger="admin")
    await message.reply_text(render.retrain_text(outcomes))


async def on_text(update: Update, context: TasteContext) -> None:
    """Plain text in a private chat: point at what the bot does."""
    assert update.effective_message is not None
    await update.effective_message.reply_text("Send me an image and I'll score it for you. /help")


async def on_error(update: object, context: TasteContext) -> None:
    """Log the details; tell the person one sentence."""
    log.error("error while handling an update", exc_info=context.error)
    if isinstance(update, Update) and update.callback_query is not None:
        try:
            await update.callback_query.answer("Something went wrong; please tap again.")
        except Exception:
            pass
    elif isinstance(update, Update) and update.effective_message is not None:
        await update.effective_message.reply_text(
            "Something went wrong on my side; please try again."
        )
