"""Tests for testing/fake_bot_api.py, driving a real python-telegram-bot Application against it."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
from PIL import Image
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import BadRequest
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from testing.fake_bot_api import FakeBotAPI, parse_request_body

USER = 7
KEYBOARD = InlineKeyboardMarkup(
    [
        [
            InlineKeyboardButton("👍", callback_data="like"),
            InlineKeyboardButton("👎", callback_data="dislike"),
        ]
    ]
)


def jpeg_bytes(width: int = 64, height: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(buf, format="JPEG")
    return buf.getvalue()


# Bytes that would break a naive multipart parser or text decoding.
NASTY = b"\r\n--boundary\r\n\x00\xff\xfe binary \r\n\r\n" * 50


class EchoBot:
    """A trivial bot: /start replies with a keyboard, photos are downloaded and echoed back."""

    def __init__(self) -> None:
        self.seen_update_ids: list[int] = []
        self.downloads: list[bytes] = []

    def install(self, app: Application) -> Application:
        app.add_handler(MessageHandler(filters.ALL, self.remember), group=-1)
        app.add_handler(CommandHandler("start", self.start))
        app.add_handler(MessageHandler(filters.PHOTO, self.photo))
        app.add_handler(CallbackQueryHandler(self.button))
        return app

    async def remember(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        self.seen_update_ids.append(update.update_id)

    async def start(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_message is not None
        await update.effective_message.reply_text("Hello! Rate this:", reply_markup=KEYBOARD)

    async def photo(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None
        await context.bot.send_chat_action(update.message.chat_id, "upload_photo")
        largest = update.message.photo[-1]
        data = bytes(await (await context.bot.get_file(largest.file_id)).download_as_bytearray())
        self.downloads.append(data)
        await update.message.reply_photo(data, caption=f"{len(data)} bytes")

    async def button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        assert query is not None
        await query.answer(f"you chose {query.data}")
        await query.edit_message_reply_markup(reply_markup=None)


async def _exercise(api: FakeBotAPI, app: Application, bot: EchoBot) -> None:
    """The shared scenario, for both front ends."""
    async with api.running(app, poll_timeout=5):
        # A command gets a reply with an inline keyboard.
        api.send_text(USER, "/start")
        [reply] = await api.wait_for(lambda: api.sent_messages(chat_id=USER))
        assert reply["text"] == "Hello! Rate this:"
        assert reply["chat"] == {"id": USER, "type": "private", "first_name": f"User{USER}"}
        assert [b["callback_data"] for b in reply["reply_markup"]["inline_keyboard"][0]] == [
            "like",
            "dislike",
        ]

        # A photo: the largest size downloads as the original bytes; the bot uploads it back.
        data = jpeg_bytes() + NASTY
        photo_update = api.send_photo(USER, data, caption="look")
        sizes = photo_update["message"]["photo"]
        assert len(sizes) == 3
        assert [s["width"] for s in sizes] == sorted(s["width"] for s in sizes)
        assert [s["file_size"] for s in sizes] == sorted(s["file_size"] for s in sizes)
        [send_photo] = await api.wait_for_call("sendPhoto")
        assert bot.downloads == [data]
        assert send_photo.files["photo"].data == data
        assert api.sent_messages(USER)[-1]["caption"] == f"{len(data)} bytes"
        assert api.calls_to("sendChatAction")[0].params == {
            "chat_id": USER,
            "action": "upload_photo",
        }

        # A button press arrives as a callback query; it is answered and the keyboard removed.
        press = api.press_button(USER, reply, "like")
        await api.wait_for_call("editMessageReplyMarkup")
        assert api.answered_callbacks() == [
            {"callback_query_id": press["callback_query"]["id"], "text": "you chose like"}
        ]
        assert "reply_markup" not in api.message(USER, reply["message_id"])
        with pytest.raises(ValueError, match="no button"):
            api.press_button(USER, reply, "like")  # the keyboard is gone

        # A redelivered update (same update_id) is handled again.
        first = api.send_text(USER, "/start")
        await api.wait_for(lambda: bot.seen_update_ids.count(first["update_id"]) == 1)
        api.redeliver(first)
        await api.wait_for(lambda: bot.seen_update_ids.count(first["update_id"]) == 2)
        later = api.send_text(USER, "hello")
        await api.wait_for(lambda: later["update_id"] in bot.seen_update_ids)

    assert bot.seen_update_ids.count(first["update_id"]) == 2
    assert api.pending_updates == []  # everything was confirmed at shutdown
    assert api.unknown_methods == []
    methods = {c.method for c in api.calls}
    assert {"getMe", "deleteWebhook", "sendMessage", "getFile", "answerCallbackQuery"} <= methods


async def test_in_process_transport_with_real_application() -> None:
    api = FakeBotAPI()
    bot = EchoBot()
    await _exercise(api, bot.install(api.application_builder().build()), bot)


async def test_http_server_front_end_with_real_application() -> None:
    api = FakeBotAPI()
    bot = EchoBot()
    with api.serve() as url:
        assert url.startswith("http://127.0.0.1:")
        app = (
            ApplicationBuilder()
            .token(api.token)
            .base_url(f"{url}/bot")
            .base_file_url(f"{url}/file/bot")
            .build()
        )
        await _exercise(api, bot.install(app), bot)


async def test_edit_errors_and_bot_methods_like_telegram() -> None:
    api = FakeBotAPI()
    api.add_user(USER, "Ann")
    async with api.running(api.application_builder().build()) as app:
        bot = app.bot
        assert bot.username == "tastebot_test_bot"
        msg = await bot.send_message(USER, "pick", reply_markup=KEYBOARD)
        with pytest.raises(BadRequest, match="not modified"):
            await bot.edit_message_reply_markup(USER, msg.message_id, reply_markup=KEYBOARD)
        with pytest.raises(BadRequest, match="not modified"):
            await bot.edit_message_text("pick", USER, msg.message_id, reply_markup=KEYBOARD)
        edited = await bot.edit_message_text("picked", USER, msg.message_id)
        assert edited.text == "picked" and edited.reply_markup is None  # keyboard dropped
        with pytest.raises(BadRequest, match=r"[Cc]hat not found"):
            await bot.send_message(999, "nobody here")
        with pytest.raises(BadRequest, match=r"[Qq]uery is too old"):
            await bot.answer_callback_query("nonexistent")
        assert await bot.set_my_commands([("start", "Start")])
        assert api.commands == [{"command": "start", "description": "Start"}]
        doc = await bot.send_document(USER, NASTY, filename="x.bin")
        assert api.file_bytes(doc.document.file_id) == NASTY
        assert doc.document.file_name == "x.bin"
        assert await bot.delete_message(USER, msg.message_id)
        assert api.sent_messages(USER) == [api.message(USER, doc.message_id)]
        assert len(api.sent_messages(USER, include_deleted=True)) == 2

        big = api.add_file(b"tiny", file_size=25 * 1024 * 1024)
        with pytest.raises(BadRequest, match=r"[Ff]ile is too big"):
            await bot.get_file(big)

        api.inject_error("sendMessage", "Bad Request: injected")
        with pytest.raises(BadRequest, match=r"[Ii]njected"):
            await bot.send_message(USER, "x")
        assert (await bot.send_message(USER, "y")).text == "y"

        assert await bot.do_api_request("someFutureMethod", {"a": 1}) is True
        assert api.unknown_methods == ["someFutureMethod"]
        assert api.calls_to("someFutureMethod")[0].params == {"a": 1}


async def test_group_chat_and_document_update() -> None:
    api = FakeBotAPI()
    update = api.send_document(
        USER, b"%PDF", mime_type="image/png", file_name="a.png", file_size=3_000_000, chat_id=-100
    )
    message = update["message"]
    assert message["chat"] == {"id": -100, "type": "group", "title": "Group -100"}
    assert message["from"] == {
        "id": USER,
        "is_bot": False,
        "first_name": f"User{USER}",
        "language_code": "en",
    }
    assert message["document"]["file_size"] == 3_000_000
    assert api.file_bytes(message["document"]["file_id"]) == b"%PDF"
    cmd = api.send_text(USER, "/start@tastebot_test_bot now")["message"]
    assert cmd["entities"] == [{"type": "bot_command", "offset": 0, "length": 24}]
    album = api.send_photo(USER, b"img", media_group_id="g1", sizes=1)["message"]
    assert album["media_group_id"] == "g1" and len(album["photo"]) == 1
    assert [m["message_id"] for m in (message, cmd, album)] == [1, 1, 2]  # ids are per chat


async def test_get_updates_offset_limit_and_long_poll_wakeup() -> None:
    api = FakeBotAPI(max_poll_wait=5)
    a, b, c = (api.send_text(USER, t) for t in "abc")
    got = await api.handle_async("getUpdates", api.token, {"limit": 2})
    assert [u["update_id"] for u in got["result"]] == [a["update_id"], b["update_id"]]
    got = await api.handle_async("getUpdates", api.token, {"offset": b["update_id"] + 1})
    assert [u["update_id"] for u in got["result"]] == [c["update_id"]]

    # Long poll: waits, and wakes as soon as an update is queued.
    async def queue_later() -> None:
        await asyncio.sleep(0.2)
        api.send_text(USER, "late")

    start = time.monotonic()
    task = asyncio.create_task(queue_later())
    got = await api.handle_async(
        "getUpdates", api.token, {"offset": c["update_id"] + 1, "timeout": 30}
    )
    await task
    assert 0.15 < time.monotonic() - start < 2
    assert [u["message"]["text"] for u in got["result"]] == ["late"]

    # Timeout is capped by max_poll_wait.
    api.max_poll_wait = 0.2
    start = time.monotonic()
    got = await api.handle_async("getUpdates", api.token, {"offset": 10**9, "timeout": 30})
    assert got == {"ok": True, "result": []} and time.monotonic() - start < 1
    assert api.poll_count == 4 and api.calls == []


def test_sync_transport_wrong_token_and_downloads() -> None:
    api = FakeBotAPI()
    file_id = api.add_file(NASTY)
    with httpx.Client(transport=api.transport(), base_url="http://t") as client:
        assert client.post("/botnope/getMe").json() == {
            "ok": False,
            "error_code": 401,
            "description": "Unauthorized",
        }
        me = client.get(f"/bot{api.token}/getMe").json()["result"]
        assert me["is_bot"] is True and me["id"] == 123456789
        info = client.post(f"/bot{api.token}/getFile", json={"file_id": file_id}).json()["result"]
        assert client.get(f"/file/bot{api.token}/{info['file_path']}").content == NASTY
        assert client.get(f"/file/bot{api.token}/nope").status_code == 404


def test_parse_form_values_like_ptb_sends_them() -> None:
    body = "chat_id=42&text=123&reply_markup=%7B%22inline_keyboard%22%3A%5B%5D%7D&disable_notification=true"
    params, files = parse_request_body("application/x-www-form-urlencoded", body.encode())
    assert params == {
        "chat_id": 42,
        "text": "123",  # text stays a string even though it looks like JSON
        "reply_markup": {"inline_keyboard": []},
        "disable_notification": True,
    }
    assert files == {}


SUBPROCESS_BOT = textwrap.dedent(
    """
    import os
    from telegram.ext import ApplicationBuilder, CommandHandler

    async def start(update, context):
        await update.message.reply_text("pong " + str(update.effective_user.id))

    url = os.environ["TELEGRAM_API_URL"]
    app = (ApplicationBuilder().token(os.environ["TELEGRAM_BOT_TOKEN"])
           .base_url(url + "/bot").base_file_url(url + "/file/bot").build())
    app.add_handler(CommandHandler("ping", start))
    app.run_polling(poll_interval=0, timeout=5)
    """
)


def test_subprocess_bot_over_real_tcp() -> None:
    api = FakeBotAPI()
    with api.serve() as url:
        env = {**os.environ, "TELEGRAM_API_URL": url, "TELEGRAM_BOT_TOKEN": api.token}
        proc = subprocess.Popen(
            [sys.executable, "-c", SUBPROCESS_BOT],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            api.send_text(USER, "/ping")
            [call] = api.wait_for_call_sync("sendMessage", timeout=20)
            assert call.params["text"] == f"pong {USER}"
            assert call.result["chat"]["id"] == USER
            assert call.result["from"]["is_bot"] is True
        finally:
            proc.terminate()
            try:
                output = proc.communicate(timeout=10)[0]
            except subprocess.TimeoutExpired:
                proc.kill()
                output = proc.communicate()[0]
        assert proc.returncode is not None, output
    assert api.pending_updates == [], output.decode(errors="replace")
