"""Photos, files, GIFs, videos and albums: score each one and reply with vote buttons.

What is scored: a photo's largest size; a file of any claimed type (its bytes decide, so a
JPEG sent as application/octet-stream is scored); for a GIF (which Telegram sends as an MP4
animation), a video or a round video note, the JPEG thumbnail Telegram makes of its first
frame. A video without a thumbnail is refused in one sentence.
"""

from __future__ import annotations

import asyncio
import logging

from telegram import Document, Message, PhotoSize, Update

from bot import metrics, render
from bot.telegram_adapter.context import (
    PLATFORM,
    Album,
    TasteContext,
    in_group,
    person_of,
)
from bot.telegram_adapter.keyboards import (
    album_keyboard,
    score_keyboard,
)
from domain import AlreadyAnswered, IncomingImage, Person, Refused, Scored, ScoreOutcome

log = logging.getLogger(__name__)


def _media(message: Message) -> PhotoSize | Document | None:
    """What to download and score; None for a video Telegram made no thumbnail of."""
    if message.photo:
        return message.photo[-1]  # sizes come smallest first
    # Before the document: an animation message carries its MP4 as a document too.
    video = message.animation or message.video or message.video_note
    if video is not None:
        return video.thumbnail
    return message.document


def _incoming(message: Message, person: Person, media: PhotoSize | Document) -> IncomingImage:
    return IncomingImage(
        person=person,
        chat_id=str(message.chat_id),
        message_id=str(message.message_id),
        caption=message.caption,
        claimed_bytes=media.file_size,
    )


async def _score(message: Message, person: Person, context: TasteContext) -> ScoreOutcome:
    media = _media(message)
    if media is None:
        return Refused("video", "a video without a thumbnail")
    incoming = _incoming(message, person, media)

    async def download() -> bytes:
        telegram_file = await context.bot.get_file(media.file_id)
        return bytes(await telegram_file.download_as_bytearray())

    outcome = await context.services.scoring.score_image(incoming, download)
    metrics.count_photo(PLATFORM, outcome)
    return outcome


async def on_image(update: Update, context: TasteContext) -> None:
    """A photo, a file, a GIF or a video → score + vote buttons (see the module docstring)."""
    message = update.effective_message
    assert message is not None
    if message.media_group_id and not in_group(update):
        await _collect_album(message, person_of(update), context)
        return
    outcome = await _score(message, person_of(update), context)
    if isinstance(outcome, AlreadyAnswered):
        return  # a redelivered update we already answered
    if isinstance(outcome, Refused):
        await message.reply_text(render.refusal_text(outcome), do_quote=True)
        return
    group = in_group(update)
    keyboard = score_keyboard(outcome.vote_target, group=group, chosen=outcome.rated_before)
    # Quoted: with several images in flight, each score sits under its own image.
    if outcome.matched_file is not None and not group:
        # Rated before: show the picture it matched, whose vote the buttons change.
        picture = await asyncio.to_thread(outcome.matched_file.read_bytes)
        reply = await message.reply_photo(
            picture, caption=render.score_text(outcome), reply_markup=keyboard, do_quote=True
        )
    else:
        text = render.GROUP_PROMPT if group else render.score_text(outcome)
        reply = await message.reply_text(text, reply_markup=keyboard, do_quote=True)
    await context.services.scoring.reply_sent(outcome.submission_id, str(reply.message_id))


async def _collect_album(message: Message, person: Person, context: TasteContext) -> None:
    """Albums arrive as one update per image. The first image's handler waits until no
    more have arrived for ALBUM_WAIT_SECONDS, then answers the whole album once; the others
    wait for that answer."""
    loop = asyncio.get_running_loop()
    assert message.media_group_id is not None
    key = (message.chat_id, message.media_group_id)
    albums = context.bot_data.albums
    first = key not in albums
    album = albums.setdefault(key, Album())
    album.messages.append(message)
    album.last_arrival = loop.time()
    if not first:
        await album.answered.wait()
        return
    try:
        await _answer_album(key, album, person, context)
    finally:
        album.answered.set()


async def _answer_album(
    key: tuple[int, str], album: Album, person: Person, context: TasteContext
) -> None:
    loop = asyncio.get_running_loop()
    wait = context.settings.album_wait_seconds
    while (quiet := loop.time() - album.last_arrival) < wait:
        await asyncio.sleep(wait - quiet)
    albums = context.bot_data.albums
    del albums[key]
    messages = sorted(album.messages, key=lambda m: m.message_id)
    outcomes = await asyncio.gather(*(_score(m, person, context) for m in messages))
    if all(isinstance(o, AlreadyAnswered) for o in outcomes):
        return
    scored = [(pos, o) for pos, o in enumerate(outcomes, 1) if isinstance(o, Scored)]
    scored.sort(key=lambda item: item[1].score, reverse=True)
    lines = [render.album_text(scored)] if scored else []
    lines += [
        f"Image {pos}: {render.refusal_text(o)}"
        for pos, o in enumerate(outcomes, 1)
        if isinstance(o, Refused)
    ]
    reply = await messages[0].reply_text(
        "\n".join(lines),
        reply_markup=album_keyboard([(o.vote_target, o.rated_before) for _, o in scored])
        if scored
        else None,
        do_quote=True,
    )
    for _, o in scored:
        await context.services.scoring.reply_sent(o.submission_id, str(reply.message_id))
