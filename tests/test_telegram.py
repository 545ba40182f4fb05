"""The real PTB Application against a fake Bot API: the whole loop and its edges."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from PIL import Image
from pydantic import SecretStr

from bot.runner import ConnectFailed, SharedService, serve
from bot.services import Services
from bot.settings import Settings
from bot.telegram_adapter.app import TelegramPlatform
from bot.telegram_adapter.callback_data import decode_vote, encode_vote
from domain import Vote
from learner.encoder import ClipImageEncoder
from testing.fake_bot_api import FakeBotAPI
from tests.conftest import image_bytes, on_both_backends
from tests.test_images import png_header_only

ADMIN = 1000
ALICE = 1


@dataclass
class Harness:
    api: FakeBotAPI
    services: Services

    async def send_photo(self, user_id: int, data: bytes, **kwargs: object) -> dict:
        """Send a photo and return the bot's reply to it."""
        update = self.api.send_photo(user_id, data, **kwargs)  # type: ignore[arg-type]
        return await self.reply_to(update["message"])

    async def reply_to(self, message: dict) -> dict:
        key = (message["chat"]["id"], message["message_id"])

        def replies() -> list[dict]:
            return [
                m
                for m in self.api.sent_messages(chat_id=key[0])
                if (r := m.get("reply_to_message")) and (r["chat"]["id"], r["message_id"]) == key
            ]

        return (await self.api.wait_for(replies))[-1]

    async def command(self, user_id: int, text: str) -> str:
        before = len(self.api.sent_messages(chat_id=user_id))
        self.api.send_text(user_id, text)
        messages = await self.api.wait_for(
            lambda: m if len(m := self.api.sent_messages(chat_id=user_id)) > before else None,
            timeout=30,
        )
        last = messages[-1]
        return str(last.get("text") or last.get("caption"))

    async def retrain(self, text: str = "/retrain") -> str:
        """An admin's /retrain …: its status message, once edited into the results."""
        before = len(self.api.sent_messages(chat_id=ADMIN))
        self.api.send_text(ADMIN, text)

        def final() -> str | None:
            new = self.api.sent_messages(chat_id=ADMIN)[before:]
            done = [
                m["text"]
                for m in new
                if not m["text"].startswith(
                    (
                        "Retraining",
                        "Starting a fine-tune",
                        "Fine-tuning",
                        "Re-embedding",
                        "Comparing",
                    )
                )
            ]
            return done[-1] if done else None

        return await self.api.wait_for(final, timeout=120)  # a fine-tune on loaded cores

    async def tap(self, user_id: int, message: dict, callback_data: str) -> dict:
        """Press a button and return how the bot answered the callback query."""
        before = len(self.api.answered_callbacks())
        self.api.press_button(user_id, message, callback_data)
        answers = await self.api.wait_for(
            lambda: a if len(a := self.api.answered_callbacks()) > before else None
        )
        return answers[-1]

    async def vote(self, user_id: int, reply: dict, vote: Vote) -> str:
        answer = await self.tap(user_id, reply, encode_vote(_submission_id(reply), vote))
        return str(answer.get("text"))


def _submission_id(reply: dict) -> int:
    data = reply["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
    parsed = decode_vote(data)
    assert parsed is not None
    return parsed[0]


@asynccontextmanager
async def running_bot(settings: Settings, encoder: ClipImageEncoder) -> AsyncIterator[Harness]:
    """The real runner (bot.runner.serve, as `python -m bot` uses it) with the real PTB
    Application, polling a fake Bot API in-process."""
    api = FakeBotAPI()
    settings = settings.model_copy(
        update={
            "telegram_bot_token": SecretStr(api.token),
            "telegram_api_url": "http://fake-telegram",
        }
    )

    async def open_service() -> Services:
        return await Services.open(settings, encoder)

    shared = SharedService(open_service)
    platform = TelegramPlatform(settings, httpx_kwargs={"transport": api.transport()})
    stop = asyncio.Event()
    running = asyncio.create_task(serve(settings, shared, [platform], stop))
    await api.wait_for_call("setMyCommands")  # the core is attached and polling starts
    assert shared.services is not None
    try:
        yield Harness(api, shared.services)
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=30)
        api.close()


async def test_a_refused_token_stops_startup_with_one_line_before_clip_loads(
    settings: Settings,
) -> None:
    api = FakeBotAPI()  # accepts only its own token
    settings = settings.model_copy(
        update={
            "telegram_bot_token": SecretStr("123:not-the-token"),
            "telegram_api_url": "http://fake-telegram",
        }
    )
    opened: list[bool] = []

    async def open_service() -> Services:
        opened.append(True)
        raise AssertionError("CLIP must not load for a token that was refused")

    platform = TelegramPlatform(settings, httpx_kwargs={"transport": api.transport()})
    try:
        with pytest.raises(ConnectFailed) as failed:
            await asyncio.wait_for(
                serve(settings, SharedService(open_service), [platform], asyncio.Event()), 30
            )
    finally:  # closed also when serve does not raise as expected, as running_bot does
        api.close()
    assert str(failed.value).startswith("telegram: could not connect (InvalidToken")
    assert "\n" not in str(failed.value)
    assert "not-the-token" not in str(failed.value)  # PTB's own message quotes the token
    assert opened == []


@pytest.fixture
async def bot(settings: Settings, encoder: ClipImageEncoder) -> AsyncIterator[Harness]:
    async with running_bot(settings, encoder) as harness:
        yield harness


@on_both_backends  # PostgreSQL: the same loop, through the real Application, on a pool
async def test_whole_loop(bot: Harness) -> None:
    assert "Send me an image" in await bot.command(ALICE, "/start")

    first = await bot.send_photo(ALICE, image_bytes(1))
    assert "Your score: 50% · cold start" in first["text"]
    labels = [b["text"] for b in first["reply_markup"]["inline_keyboard"][0]]
    assert labels == ["👎 Dislike", "👍 Like", "⭐ Super like"]

    replies = [first] + [await bot.send_photo(ALICE, image_bytes(s)) for s in range(2, 13)]
    for seed, reply in enumerate(replies, start=1):
        vote = Vote.LIKE if seed % 2 == 0 else Vote.DISLIKE
        assert (await bot.vote(ALICE, reply, vote)).startswith("Saved")
    # The buttons show the choice.
    shown = bot.api.message(ALICE, replies[1]["message_id"])["reply_markup"]["inline_keyboard"][0]
    assert [b["text"] for b in shown] == ["👎 Dislike", "✓ 👍 Like", "⭐ Super like"]

    assert "No taste model yet" in await bot.command(ALICE, "/stats")
    result = await bot.retrain()
    assert "v1 promoted" in result, result

    later = await bot.send_photo(ALICE, image_bytes(40))
    assert "· model v1" in later["text"]
    assert "you liked" in later["text"]  # "Looks like …" or "Not close to anything you liked yet"
    stats = await bot.command(ALICE, "/stats")
    assert "Images you sent: 13 · 👍 6 · ⭐ 0 · 👎 6" in stats and "(version 1)" in stats
    assert "All users" not in stats


async def test_document_image_and_changed_vote(bot: Harness) -> None:
    png = image_bytes(5, fmt="PNG")
    reply = await _send_document(bot, png, "image/png", "shot.png")
    assert "Your score" in reply["text"]
    assert (await bot.vote(ALICE, reply, Vote.LIKE)).startswith("Saved")
    assert (await bot.vote(ALICE, reply, Vote.SUPER_LIKE)).startswith("Saved")
    assert (await bot.vote(ALICE, reply, Vote.SUPER_LIKE)).startswith("Already saved")
    user = await bot.services.store.people.get_or_create_user("telegram", str(ALICE))
    counts = await bot.services.store.people.user_counts(user.id)
    assert (counts.likes, counts.super_likes) == (0, 1)


async def _send_document(bot: Harness, data: bytes, mime: str, name: str, **kw: object) -> dict:
    update = bot.api.send_document(ALICE, data, mime_type=mime, file_name=name, **kw)  # type: ignore[arg-type]
    return await bot.reply_to(update["message"])


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (64, 64), colour) for colour in ("red", "blue", "green")]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100)
    return out.getvalue()


# One table for every platform's adapter: (data, MIME type, file name, claimed size, expected words).
BAD_INPUTS = [
    (b"%PDF-1.4\n%%EOF", "application/pdf", "doc.pdf", None, "not an image"),
    (image_bytes(2)[:400], "image/jpeg", "cut.jpg", None, "damaged"),
    (b"\x00" * 64, "image/png", "zeros.png", None, "image"),
    (png_header_only(60000, 60000), "image/png", "bomb.png", None, "pixels"),
    (image_bytes(3), "image/jpeg", "huge.jpg", 25 * 1024 * 1024, "over 20 MB"),
]
BAD_INPUT_IDS = ["pdf", "truncated", "garbage", "decompression-bomb", "over-20MB"]


@pytest.mark.parametrize(
    ("data", "mime", "name", "claimed", "expected"), BAD_INPUTS, ids=BAD_INPUT_IDS
)
async def test_bad_input_gets_one_sentence_and_stores_nothing(
    bot: Harness, data: bytes, mime: str, name: str, claimed: int | None, expected: str
) -> None:
    reply = await _send_document(bot, data, mime, name, file_size=claimed)
    assert expected in reply["text"], reply["text"]
    assert "reply_markup" not in reply or not reply["reply_markup"]
    if claimed is not None:
        assert bot.api.calls_to("getFile") == []  # refused before downloading
    for table in ("images", "embeddings", "submissions"):
        rows = await bot.services.store.db.fetch_all(f"SELECT COUNT(*) FROM {table}")
        assert rows[0][0] == 0, table
    # …and the bot is still working.
    assert "Your score" in (await bot.send_photo(ALICE, image_bytes(9)))["text"]


async def test_animated_gif_uses_first_frame(bot: Harness) -> None:
    reply = await _send_document(bot, animated_gif(), "image/gif", "loop.gif")
    assert "Your score" in reply["text"]


async def test_duplicate_updates_change_nothing_twice(bot: Harness) -> None:
    update = bot.api.send_photo(ALICE, image_bytes(4))
    replies = await bot.api.wait_for(lambda: bot.api.sent_messages(chat_id=ALICE))
    press = bot.api.press_button(
        ALICE, replies[0], encode_vote(_submission_id(replies[0]), Vote.LIKE)
    )
    await bot.api.wait_for(lambda: len(bot.api.answered_callbacks()) == 1)
    # Telegram re-sends after a crash: the inbox knows both updates and drops them.
    bot.api.redeliver(update)
    bot.api.redeliver(press)
    await bot.api.wait_for(lambda: not bot.api.pending_updates)
    await asyncio.sleep(0.3)
    assert len(bot.api.calls_to("answerCallbackQuery")) == 1
    # Past the inbox's retention the handlers themselves change nothing twice.
    await bot.services.store.db.execute("DELETE FROM inbox")
    bot.api.redeliver(update)
    bot.api.redeliver(press)  # its late answer fails ("query is too old"), as on Telegram
    await bot.api.wait_for(lambda: len(bot.api.calls_to("answerCallbackQuery")) == 2)
    await bot.api.wait_for(lambda: not bot.api.pending_updates)
    await asyncio.sleep(0.2)
    assert len(bot.api.sent_messages(chat_id=ALICE)) == 1  # one reply, not two
    rows = await bot.services.store.db.fetch_all("SELECT COUNT(*), MAX(revision) FROM feedback")
    assert tuple(rows[0]) == (1, 1)
    assert len(bot.api.calls_to("editMessageReplyMarkup")) == 1


async def test_retrain_is_for_admins_only(bot: Harness) -> None:
    assert await bot.command(ALICE, "/retrain") == "Only the bot's admins can use /retrain."
    assert "Nobody has new votes" in await bot.retrain()
    assert "All users: " in await bot.command(ADMIN, "/stats")


async def test_foreign_callback_data_is_answered(bot: Harness) -> None:
    reply = await bot.send_photo(ALICE, image_bytes(6))
    bot.api.messages[(ALICE, reply["message_id"])]["reply_markup"]["inline_keyboard"][0][0][
        "callback_data"
    ] = "something-else"
    bot.api.press_button(ALICE, reply, "something-else")
    answers = await bot.api.wait_for(bot.api.answered_callbacks)
    assert answers[-1]["text"] == "This button is not mine."


async def test_slow_image_does_not_hold_up_button_taps(bot: Harness) -> None:
    reply = await bot.send_photo(ALICE, image_bytes(8))
    release = asyncio.Event()
    original = bot.services.encoder.embedder.embed

    def slow_embed(images):  # type: ignore[no-untyped-def]
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(timeout=10)
        return original(images)

    loop = asyncio.get_running_loop()
    bot.services.encoder.embedder.embed = slow_embed  # type: ignore[method-assign]
    try:
        bot.api.send_photo(2, image_bytes(99))  # another person's photo is stuck in CLIP
        await asyncio.sleep(0.2)
        assert await bot.vote(ALICE, reply, Vote.LIKE) == "Saved: 👍 Like"
        assert bot.api.sent_messages(chat_id=2) == []  # still stuck, yet the tap was answered
    finally:
        release.set()
    await bot.api.wait_for(lambda: bot.api.sent_messages(chat_id=2))
    bot.services.encoder.embedder.embed = original  # type: ignore[method-assign]


async def test_scheduled_retrain_tells_the_person(
    settings: Settings, encoder: ClipImageEncoder
) -> None:
    fast = settings.model_copy(update={"retrain_check_minutes": 0.01, "retrain_min_new_votes": 5})
    async with running_bot(fast, encoder) as bot:
        for seed in range(1, 13):
            reply = await bot.send_photo(ALICE, image_bytes(seed))
            await bot.vote(ALICE, reply, Vote.LIKE if seed % 2 == 0 else Vote.DISLIKE)
        ready = await bot.api.wait_for(
            lambda: [
                m
                for m in bot.api.sent_messages(chat_id=ALICE)
                if m.get("text", "").startswith("Your taste model is ready")
            ],
            timeout=30,
        )
        assert len(ready) == 1
        runs = await bot.services.store.db.fetch_all("SELECT trigger, outcome FROM training_runs")
        assert tuple(runs[0]) == ("schedule", "promoted")  # more votes may have trained v2 after
        assert {r[0] for r in runs} == {"schedule"}


async def test_the_first_model_comes_right_after_the_votes_that_allow_it(
    settings: Settings, encoder: ClipImageEncoder
) -> None:
    """No /retrain, no scheduler tick (it is an hour away): the votes themselves start the
    first training, and the person is told in plain words, once."""
    quick = settings.model_copy(
        update={
            "retrain_after_votes": True,
            "retrain_pause_seconds": 0.2,
            "retrain_check_minutes": 60,
        }
    )
    async with running_bot(quick, encoder) as bot:
        progress = []
        for seed in range(1, quick.head_min_votes + 3):
            reply = await bot.send_photo(ALICE, image_bytes(seed))
            await bot.vote(ALICE, reply, Vote.LIKE if seed % 2 == 0 else Vote.DISLIKE)
            if seed == 2:
                progress.append(await bot.command(ALICE, "/stats"))
        assert "first model needs 4 more votes" in progress[0], progress[0]

        def ready() -> list[str]:
            texts = [m.get("text", "") for m in bot.api.sent_messages(chat_id=ALICE)]
            return [t for t in texts if t.startswith("Your taste model")]

        first = await bot.api.wait_for(ready, timeout=30)
        assert first[0].startswith("Your taste model is ready"), first
        assert "AUC" not in first[0] and "holdout" not in first[0].lower()
        runs = await bot.services.store.db.fetch_all("SELECT trigger, outcome FROM training_runs")
        assert runs and {r[0] for r in runs} == {"votes"}
        assert "taste model (version" in await bot.command(ALICE, "/stats")
        await asyncio.sleep(1.0)  # later rounds that only tie are not announced
        assert all(not t.startswith("Your taste model is ready") for t in ready()[1:])


def big_phone_jpeg() -> bytes:
    """A 9000x6000 (54 MP) baseline JPEG, as a phone original sent as a file: one flat colour
    with a gradient compresses to well under the 20 MB download limit."""
    image = Image.linear_gradient("L").resize((9000, 6000)).convert("RGB")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=70)
    return out.getvalue()


async def test_everyday_files_are_scored_by_their_bytes(bot: Harness) -> None:
    """An octet-stream JPEG, a GIF as Telegram sends it (an MP4 animation with a thumbnail),
    a video, and a 54-megapixel phone JPEG: each gets a score."""
    jpeg = image_bytes(11)
    reply = await _send_document(bot, jpeg, "application/octet-stream", "IMG_0001")
    assert "Your score" in reply["text"], reply["text"]
    for kind in ("animation", "video", "video_note"):
        update = bot.api.send_video(ALICE, b"\x00\x00\x00\x18ftypmp42", kind=kind, thumbnail=jpeg)
        reply = await bot.reply_to(update["message"])
        assert "Your score" in reply["text"], (kind, reply["text"])
    # The MP4 itself is never downloaded: only the thumbnail is.
    downloaded = {call.params.get("file_id") for call in bot.api.calls_to("getFile")}
    mp4s = {f.file_id for f in bot.api.files.values() if f.file_path.endswith(".mp4")}
    assert downloaded and not downloaded & mp4s
    reply = await _send_document(bot, big_phone_jpeg(), "image/jpeg", "PXL_20261206.jpg")
    assert "Your score" in reply["text"], reply["text"]


async def test_a_video_without_a_thumbnail_is_refused_in_words(bot: Harness) -> None:
    update = bot.api.send_video(ALICE, b"\x00\x00\x00\x18ftypmp42", kind="video")
    reply = await bot.reply_to(update["message"])
    assert "video" in reply["text"] and "Your score" not in reply["text"]


async def _answer(bot: Harness, send: Callable[[], object]) -> str:
    """The bot's next message to Alice after ``send()``."""
    before = len(bot.api.sent_messages(chat_id=ALICE))
    send()
    messages = await bot.api.wait_for(
        lambda: m if len(m := bot.api.sent_messages(chat_id=ALICE)) > before else None
    )
    return str(messages[-1].get("text"))


async def test_every_private_message_gets_an_answer(bot: Harness) -> None:
    assert "I don't know /foo" in await bot.command(ALICE, "/foo")
    sticker = image_bytes(12, fmt="WEBP")
    assert "stickers" in await _answer(bot, lambda: bot.api.send_sticker(ALICE, sticker))
    location = {"latitude": 1.0, "longitude": 2.0}
    sent = await _answer(bot, lambda: bot.api.send_raw_message(ALICE, location=location))
    assert "Send me an image" in sent
    assert "Send me an image" in await _answer(bot, lambda: bot.api.send_text(ALICE, "hello"))


async def test_a_newcomers_first_reply_comes_from_the_crowd_model(bot: Harness) -> None:
    from domain import Person
    from tests.test_crowd_service import everyone_likes_red

    first = await bot.send_photo(ALICE, image_bytes(30))
    assert "cold start" in first["text"]
    voters = [Person("telegram", str(n)) for n in (501, 502, 503)]
    await everyone_likes_red(bot.services, voters, range(18))
    assert (await bot.services.crowd_training.retrain("test")).promoted
    reply = await bot.send_photo(7, image_bytes(31))  # someone who never wrote before
    assert "Your score: " in reply["text"] and "· crowd model" in reply["text"], reply["text"]
