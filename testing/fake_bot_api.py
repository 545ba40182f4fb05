"""An in-process fake of the Telegram Bot API for tests that drive the *real* PTB Application.

One :class:`FakeBotAPI` object holds all state (queued updates, files, the messages the bot
sent, a log of every call). The pure request handler :meth:`FakeBotAPI.handle` is reachable
through two front ends that share that state:

* :meth:`FakeBotAPI.transport` -- an ``httpx.MockTransport`` for in-process tests (no sockets);
* :meth:`FakeBotAPI.serve` -- a context manager running a tiny HTTP server on 127.0.0.1 in a
  background thread, for a bot started as a subprocess (``TELEGRAM_API_URL=<base_url>``).

URL shapes are those of the real / self-hosted Bot API::

    {base}/bot<token>/<method>             (GET query or POST json / urlencoded / multipart)
    {base}/file/bot<token>/<file_path>     (file download)

Pointing PTB 22 at the fake
---------------------------
PTB *appends the token itself* to ``base_url`` and ``base_file_url`` (unless the string contains
``{token}``), then requests ``f"{bot.base_url}/{method}"`` and downloads
``f"{bot.base_file_url}/{file_path}"``. So pass the prefixes **without** the token::

    # in-process: every request (bot calls, getUpdates, downloads) goes to the fake, no TCP
    api = FakeBotAPI()
    app = (
        ApplicationBuilder()
        .token(api.token)
        .base_url("http://fake-telegram/bot")            # any host; only the path matters
        .base_file_url("http://fake-telegram/file/bot")
        .request(api.request())                           # HTTPXRequest(httpx_kwargs={"transport":...})
        .get_updates_request(api.request())               # getUpdates uses a *separate* request
        .build()
    )
    # or simply: app = api.application_builder().build()

    # out-of-process / real TCP
    with api.serve() as url:                              # url == "http://127.0.0.1:<port>"
        ApplicationBuilder().token(api.token).base_url(f"{url}/bot").base_file_url(f"{url}/file/bot")
        # or: subprocess.Popen([sys.executable, "-m", "bot"],
        #                      env={..., "TELEGRAM_API_URL": url, "TELEGRAM_BOT_TOKEN": api.token})

``HTTPXRequest`` builds its ``httpx.AsyncClient(**{..., "transport": None, **httpx_kwargs})``, so
``httpx_kwargs={"transport": api.transport()}`` replaces the network transport. Bot calls and
file downloads (``File.download_*`` uses ``bot.request``) go through ``.request(...)``;
``getUpdates`` goes through ``.get_updates_request(...)`` -- both must be given the transport.

How PTB sends parameters: without uploads it POSTs ``application/x-www-form-urlencoded`` where
every non-string value is JSON-encoded (``chat_id=42``, ``reply_markup={"inline_keyboard":..}``);
with uploads it POSTs ``multipart/form-data``: the same string fields plus one file part per
upload, named after the parameter (``photo``) or ``attached<hex>`` when referenced as
``attach://...``. The fake decodes both (and plain JSON bodies) into Python values.

Test-side usage (async, in-process)::

    api = FakeBotAPI()
    app = api.application_builder().build()
    app.add_handler(...)
    async with api.running(app):                          # initialize/start/start_polling/stop
        api.send_text(user_id=7, text="/start")
        [call] = await api.wait_for_call("sendMessage")
        photo_update = api.send_photo(7, jpeg_bytes)
        msg = (await api.wait_for(lambda: api.sent_messages(chat_id=7)))[-1]
        api.press_button(7, msg, "like")

Sync variants for a subprocess bot: :meth:`FakeBotAPI.wait_for_sync`,
:meth:`FakeBotAPI.wait_for_call_sync`.

Realism notes: ``getFile`` on a file over 20 MB answers ``Bad Request: file is too big``;
editing a message to identical content answers ``Bad Request: message is not modified``;
a text over 4096 characters (UTF-16 code units, as Telegram counts) answers ``Bad Request:
message is too long``, a caption over 1024 ``Bad Request: message caption is too long``;
answering a callback query twice (or an unknown one) answers ``Bad Request: query is too old
...``; sending to a chat no user ever wrote from answers ``Bad Request: chat not found``.
Unknown methods are recorded, logged and answered ``{"ok": true, "result": true}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import http.server
import itertools
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TOKEN = "123456789:TEST-fake-bot-api-token"
#: Telegram refuses getFile for files above this size (bots may only download up to 20 MB).
MAX_DOWNLOAD_SIZE = 20 * 1024 * 1024
MAX_TEXT = 4096  # Telegram's limits, in UTF-16 code units
MAX_CAPTION = 1024


def _check_length(text: str, limit: int, error: str) -> None:
    if len(text.encode("utf-16-le")) // 2 > limit:
        raise ApiError(f"Bad Request: {error}")


#: Parameters that are plain strings even when they look like JSON (``text="123"``).
_STRING_PARAMS = frozenset(
    """
    text caption parse_mode callback_query_id file_id url action emoji title
    description short_description query inline_message_id business_connection_id
    message_effect_id photo document audio video voice animation sticker thumbnail
    name language_code secret_token first_name last_name phone_number address
    question media_group_id
    """.split()  # noqa: SIM905 - compact list
)

_NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup "
    "are exactly the same as a current content and reply markup of the message"
)
_QUERY_TOO_OLD = "Bad Request: query is too old and response timeout expired or query ID is invalid"


class ApiError(Exception):
    """Raised inside method implementations; becomes ``{"ok": false, ...}``."""

    def __init__(
        self, description: str, error_code: int = 400, parameters: dict[str, Any] | None = None
    ) -> None:
        super().__init__(description)
        self.description = description
        self.error_code = error_code
        self.parameters = parameters

    def to_response(self) -> dict[str, Any]:
        resp: dict[str, Any] = {
            "ok": False,
            "error_code": self.error_code,
            "description": self.description,
        }
        if self.parameters:
            resp["parameters"] = self.parameters
        return resp


@dataclass(frozen=True)
class UploadedFile:
    """One file part of a multipart request."""

    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class Call:
    """One request the bot made. ``response`` is the JSON the fake answered."""

    method: str
    params: dict[str, Any]
    files: dict[str, UploadedFile] = field(default_factory=dict)
    token: str = ""
    time: float = field(default_factory=time.monotonic)
    response: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.response.get("ok"))

    @property
    def result(self) -> Any:
        return self.response.get("result")


@dataclass
class StoredFile:
    file_id: str
    file_unique_id: str
    file_path: str
    data: bytes
    file_size: int


@dataclass
class _QueuedUpdate:
    update: dict[str, Any]
    redelivery: bool = False
    delivered: bool = False


# --------------------------------------------------------------------------------------------
# Request parsing shared by both front ends
# --------------------------------------------------------------------------------------------


def _coerce(key: str, value: str) -> Any:
    """Turn a form-field string back into the value PTB JSON-encoded (ints, dicts, lists)."""
    if key in _STRING_PARAMS:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    header = email.parser.HeaderParser().parsestr(f"Content-Type: {content_type}\r\n\r\n")
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str):
        raise ApiError("Bad Request: multipart boundary missing")
    params: dict[str, Any] = {}
    files: dict[str, UploadedFile] = {}
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    for chunk in (b"\r\n" + body).split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break  # closing delimiter
        head, _, content = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        headers = email.parser.HeaderParser().parsestr(head.decode("utf-8", "replace"))
        name = headers.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        filename = headers.get_filename()
        if filename is None and headers.get("content-type") is None:
            params[name] = _coerce(name, content.decode("utf-8"))
            continue
        files[name] = UploadedFile(filename, headers.get("content-type"), content)
    return params, files


def parse_request_body(
    content_type: str | None, body: bytes, query: str = ""
) -> tuple[dict[str, Any], dict[str, UploadedFile]]:
    """Decode a Bot API request (query string + json / urlencoded / multipart body)."""
    params: dict[str, Any] = {
        k: _coerce(k, v) for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True)
    }
    files: dict[str, UploadedFile] = {}
    ctype = (content_type or "").split(";")[0].strip().lower()
    if not body:
        pass
    elif ctype == "application/json":
        params.update(json.loads(body))
    elif ctype == "multipart/form-data":
        form, files = _parse_multipart(content_type or "", body)
        params.update(form)
    else:  # application/x-www-form-urlencoded (PTB's default without uploads)
        params.update(
            {
                k: _coerce(k, v)
                for k, v in urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True)
            }
        )
    return params, files


def _split_path(path: str) -> tuple[str, str, str] | None:
    """``/bot<t>/<m>`` -> ("api", t, m); ``/file/bot<t>/<p>`` -> ("file", t, p); else None."""
    path = urllib.parse.unquote(path.split("?", 1)[0])
    kind = "api"
    if path.startswith("/file/bot"):
        kind, rest = "file", path[len("/file/bot") :]
    elif path.startswith("/bot"):
        rest = path[len("/bot") :]
    else:
        return None
    token, sep, tail = rest.partition("/")
    if not sep or not tail:
        return None
    return kind, token, tail


def _normalize_markup(markup: Any) -> dict[str, Any] | None:
    if not markup:
        return None
    if isinstance(markup, str):
        markup = json.loads(markup)
    if isinstance(markup, dict) and markup.get("inline_keyboard") == []:
        return None
    return markup


def _callback_datas(markup: dict[str, Any] | None) -> list[str]:
    if not markup:
        return []
    return [
        button["callback_data"]
        for row in markup.get("inline_keyboard", [])
        for button in row
        if "callback_data" in button
    ]


# --------------------------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------------------------


class FakeBotAPI:
    """Fake Telegram Bot API state + request handler. Thread-safe.

    Args:
        token: the only token accepted (others get ``401 Unauthorized``); ``None`` accepts any.
        max_poll_wait: cap (seconds) on how long one ``getUpdates`` long-poll may wait, whatever
            ``timeout`` the bot asks for. It wakes immediately when an update is queued.
        record_polls: also record ``getUpdates`` calls in :attr:`calls` (off by default: a
            polling bot makes many). Their number is in :attr:`poll_count` either way.
    """

    def __init__(
        self,
        token: str | None = DEFAULT_TOKEN,
        *,
        bot_username: str = "tastebot_test_bot",
        bot_first_name: str = "Tastebot",
        max_poll_wait: float = 1.0,
        record_polls: bool = False,
    ) -> None:
        self.token = token if token is not None else DEFAULT_TOKEN
        self._accept_any_token = token is None
        self.max_poll_wait = max_poll_wait
        self.record_polls = record_polls
        bot_id = self.token.split(":", 1)[0]
        self.bot_user: dict[str, Any] = {
            "id": int(bot_id) if bot_id.isdigit() else 123456789,
            "is_bot": True,
            "first_name": bot_first_name,
            "username": bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._async_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._closed = False
        # Set by stall(): HTTP requests are accepted and never answered (a Bot API that hangs)
        self._stalled = threading.Event()
        self._version = 0  # bumped on every state change, for wait_for_sync

        self.calls: list[Call] = []
        self.poll_count = 0
        self.unknown_methods: list[str] = []
        self.commands: list[dict[str, Any]] = []
        self.files: dict[str, StoredFile] = {}
        self.users: dict[int, dict[str, Any]] = {}
        self.chats: dict[int, dict[str, Any]] = {}
        #: (chat_id, message_id) -> current message dict (bot's and users' messages).
        self.messages: dict[tuple[int, int], dict[str, Any]] = {}
        self._bot_message_keys: list[tuple[int, int]] = []
        self._deleted: set[tuple[int, int]] = set()
        self._callback_queries: dict[str, bool] = {}  # id -> answered
        self._queue: list[_QueuedUpdate] = []
        self._confirmed_offset = 0
        self._injected_errors: list[tuple[str, ApiError]] = []

        self._update_ids = itertools.count(10_000)
        self._file_ids = itertools.count(1)
        self._callback_ids = itertools.count(1)
        self._message_ids: dict[int, itertools.count[int]] = {}

    # ---------------------------------------------------------------- notification plumbing

    def _notify(self) -> None:
        """Wake sync and async waiters. Caller holds the lock."""
        self._version += 1
        self._cond.notify_all()
        for loop, event in list(self._async_waiters):
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(event.set)

    def close(self) -> None:
        """Make pending and future long-polls return immediately (used on server shutdown)."""
        with self._lock:
            self._closed = True
            self._notify()
        self._stalled.clear()

    def stall(self) -> None:
        """From now on (over HTTP) accept every request and never answer it, as a Bot API
        that stopped responding does; pending long-polls stop answering too."""
        self._stalled.set()
        with self._lock:
            self._notify()

    def stalled_wait(self) -> None:
        """Block a request's handler thread while the fake is stalled (until close())."""
        while self._stalled.is_set():
            time.sleep(0.05)

    # ---------------------------------------------------------------- users, chats, files

    def add_user(self, user_id: int, first_name: str | None = None, **extra: Any) -> dict[str, Any]:
        """Register (or update) a user; returns the Telegram ``User`` dict."""
        with self._lock:
            user = self.users.get(user_id) or {
                "id": user_id,
                "is_bot": False,
                "first_name": first_name or f"User{user_id}",
                "language_code": "en",
            }
            if first_name:
                user["first_name"] = first_name
            user.update(extra)
            self.users[user_id] = user
            self._ensure_chat(user_id, user_id)
            return user

    def _ensure_chat(self, chat_id: int, user_id: int) -> dict[str, Any]:
        chat = self.chats.get(chat_id)
        if chat is None:
            if chat_id == user_id:
                user = self.users[user_id]
                chat = {"id": chat_id, "type": "private", "first_name": user["first_name"]}
            else:
                if chat_id > 0:
                    raise ValueError(f"group chat ids must be negative, got {chat_id}")
                kind = "supergroup" if chat_id <= -1_000_000_000_000 else "group"  # -100xxxxxxxxxx
                chat = {"id": chat_id, "type": kind, "title": f"Group {chat_id}"}
            self.chats[chat_id] = chat
        return chat

    def add_file(
        self, data: bytes, *, file_size: int | None = None, file_path: str | None = None
    ) -> str:
        """Store bytes as a Telegram file; returns its ``file_id``.

        ``file_size`` overrides the reported size (claim 25 MB without storing 25 MB).
        """
        with self._lock:
            n = next(self._file_ids)
            file_id = f"FAKEFILE{n:06d}"
            stored = StoredFile(
                file_id=file_id,
                file_unique_id=f"FAKEUNIQ{n:06d}",
                file_path=file_path or f"files/file_{n}.bin",
                data=bytes(data),
                file_size=len(data) if file_size is None else file_size,
            )
            self.files[file_id] = stored
            return file_id

    def file_bytes(self, file_id: str) -> bytes:
        with self._lock:
            return self.files[file_id].data

    # ---------------------------------------------------------------- update builders

    def _next_message_id(self, chat_id: int) -> int:
        counter = self._message_ids.setdefault(chat_id, itertools.count(1))
        return next(counter)

    def _user_message(self, user_id: int, chat_id: int | None, **content: Any) -> dict[str, Any]:
        if user_id not in self.users:
            self.add_user(user_id)
        chat_id = user_id if chat_id is None else chat_id
        chat = self._ensure_chat(chat_id, user_id)
        message = {
            "message_id": self._next_message_id(chat_id),
            "from": dict(self.users[user_id]),
            "chat": dict(chat),
            "date": int(time.time()),
            **{k: v for k, v in content.items() if v is not None},
        }
        self.messages[(chat_id, message["message_id"])] = message
        return message

    def queue_update(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Queue a raw update body (e.g. ``{"message": {...}}``); assigns ``update_id``."""
        with self._lock:
            update = {"update_id": next(self._update_ids), **payload}
            self._queue.append(_QueuedUpdate(update))
            self._notify()
            return update

    def send_text(self, user_id: int, text: str, *, chat_id: int | None = None) -> dict[str, Any]:
        """A user sends ``text``; ``/commands`` get a ``bot_command`` entity. Returns the update."""
        with self._lock:
            entities = None
            if text.startswith("/"):
                command = text.split(maxsplit=1)[0]
                entities = [{"type": "bot_command", "offset": 0, "length": len(command)}]
            message = self._user_message(user_id, chat_id, text=text, entities=entities)
            return self.queue_update({"message": message})

    def send_photo(
        self,
        user_id: int,
        data: bytes,
        *,
        chat_id: int | None = None,
        caption: str | None = None,
        media_group_id: str | None = None,
        sizes: int = 3,
        file_size: int | None = None,
    ) -> dict[str, Any]:
        """A user sends a photo. ``message.photo`` has ``sizes`` PhotoSize entries of increasing
        width/height/file_size; only the largest (last) one downloads as ``data``."""
        if sizes < 1:
            raise ValueError("sizes must be >= 1")
        with self._lock:
            full_size = len(data) if file_size is None else file_size
            width, height = _image_dimensions(data)
            photo: list[dict[str, Any]] = []
            for i in range(sizes):
                scale = 2 ** (sizes - 1 - i)  # the largest has scale 1
                if i == sizes - 1:
                    file_id = self.add_file(data, file_size=file_size, file_path=None)
                    size = full_size
                else:
                    size = max(1, full_size // (scale * scale))
                    file_id = self.add_file(f"thumbnail {i} of a photo".encode(), file_size=size)
                stored = self.files[file_id]
                stored.file_path = f"photos/file_{file_id}.jpg"
                photo.append(
                    {
                        "file_id": file_id,
                        "file_unique_id": stored.file_unique_id,
                        "file_size": size,
                        "width": max(1, width // scale),
                        "height": max(1, height // scale),
                    }
                )
            message = self._user_message(
                user_id, chat_id, photo=photo, caption=caption, media_group_id=media_group_id
            )
            return self.queue_update({"message": message})

    def send_document(
        self,
        user_id: int,
        data: bytes,
        *,
        mime_type: str,
        file_name: str,
        file_size: int | None = None,
        chat_id: int | None = None,
        caption: str | None = None,
    ) -> dict[str, Any]:
        """A user sends a file as a document (e.g. an uncompressed image)."""
        with self._lock:
            file_id = self.add_file(data, file_size=file_size)
            stored = self.files[file_id]
            stored.file_path = f"documents/file_{file_id}_{file_name}"
            document = {
                "file_id": file_id,
                "file_unique_id": stored.file_unique_id,
                "file_name": file_name,
                "mime_type": mime_type,
                "file_size": stored.file_size,
            }
            message = self._user_message(user_id, chat_id, document=document, caption=caption)
            return self.queue_update({"message": message})

    def _photo_size(self, data: bytes, folder: str) -> dict[str, Any]:
        file_id = self.add_file(data)
        stored = self.files[file_id]
        stored.file_path = f"{folder}/file_{file_id}.jpg"
        width, height = _image_dimensions(data)
        return {
            "file_id": file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": stored.file_size,
            "width": width,
            "height": height,
        }

    def send_video(
        self,
        user_id: int,
        data: bytes,
        *,
        kind: str = "animation",
        thumbnail: bytes | None = None,
        mime_type: str = "video/mp4",
        chat_id: int | None = None,
        caption: str | None = None,
    ) -> dict[str, Any]:
        """A user sends a GIF (``kind="animation"``: Telegram converts GIFs to MP4 and sends the
        message with both ``animation`` and ``document``), a ``video`` or a ``video_note``.
        ``thumbnail`` is the small JPEG Telegram makes of the first frame."""
        if kind not in ("animation", "video", "video_note"):
            raise ValueError(f"unknown video kind {kind!r}")
        with self._lock:
            file_id = self.add_file(data)
            stored = self.files[file_id]
            stored.file_path = f"{kind}s/file_{file_id}.mp4"
            media: dict[str, Any] = {
                "file_id": file_id,
                "file_unique_id": stored.file_unique_id,
                "file_size": stored.file_size,
                "duration": 3,
            }
            if kind == "video_note":
                media["length"] = 240
            else:
                media.update(width=320, height=240, mime_type=mime_type)
            if thumbnail is not None:
                media["thumbnail"] = self._photo_size(thumbnail, "thumbnails")
            content: dict[str, Any] = {kind: media, "caption": caption}
            if kind == "animation":
                content["document"] = {
                    k: v for k, v in media.items() if k not in ("width", "height", "duration")
                } | {"file_name": "animation.gif.mp4"}
            message = self._user_message(user_id, chat_id, **content)
            return self.queue_update({"message": message})

    def send_sticker(
        self, user_id: int, data: bytes, *, chat_id: int | None = None
    ) -> dict[str, Any]:
        """A user sends a (static, WebP) sticker."""
        with self._lock:
            size = self._photo_size(data, "stickers")
            sticker = size | {
                "type": "regular",
                "is_animated": False,
                "is_video": False,
                "emoji": "🙂",
            }
            message = self._user_message(user_id, chat_id, sticker=sticker)
            return self.queue_update({"message": message})

    def send_raw_message(
        self, user_id: int, *, chat_id: int | None = None, **content: Any
    ) -> dict[str, Any]:
        """A message with arbitrary content fields (a location, a poll; none at all)."""
        with self._lock:
            message = self._user_message(user_id, chat_id, **content)
            return self.queue_update({"message": message})

    def press_button(
        self, user_id: int, message: dict[str, Any], callback_data: str, *, strict: bool = True
    ) -> dict[str, Any]:
        """A user presses the inline button with ``callback_data`` on ``message`` (a message the
        bot sent; its *current* version is used). With ``strict`` the button must currently be
        on the message. Returns the ``callback_query`` update."""
        with self._lock:
            if user_id not in self.users:
                self.add_user(user_id)
            key = (message["chat"]["id"], message["message_id"])
            current = self.messages.get(key)
            if current is None or key in self._deleted:
                raise LookupError(f"message {key} does not exist (deleted or never sent)")
            available = _callback_datas(current.get("reply_markup"))
            if strict and callback_data not in available:
                raise ValueError(
                    f"no button with callback_data={callback_data!r} on message {key}; "
                    f"available: {available}"
                )
            query_id = f"cbq{next(self._callback_ids)}-{user_id}"
            self._callback_queries[query_id] = False
            query = {
                "id": query_id,
                "from": dict(self.users[user_id]),
                "message": json.loads(json.dumps(current)),
                "chat_instance": f"chat-instance-{key[0]}",
                "data": callback_data,
            }
            return self.queue_update({"callback_query": query})

    def redeliver(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue ``update`` again with the *same* update_id (Telegram re-sending after a crash).

        It is delivered even though the bot already confirmed that id, ahead of newer updates.
        """
        with self._lock:
            if "callback_query" in update:  # a resent query can be answered again
                self._callback_queries[update["callback_query"]["id"]] = False
            self._queue.append(_QueuedUpdate(update, redelivery=True))
            self._notify()
            return update

    def inject_error(
        self,
        method: str,
        description: str = "Bad Request: injected error",
        *,
        error_code: int = 400,
        retry_after: int | None = None,
        times: int = 1,
    ) -> None:
        """Make the next ``times`` calls of ``method`` fail (e.g. ``error_code=429, retry_after=1``
        -> PTB raises RetryAfter; 5xx -> NetworkError)."""
        params = {"retry_after": retry_after} if retry_after is not None else None
        with self._lock:
            for _ in range(times):
                self._injected_errors.append((method, ApiError(description, error_code, params)))

    def drop_pending(self) -> list[dict[str, Any]]:
        """Forget the queued updates, as Telegram does once a bot confirmed them; returns them."""
        with self._lock:
            dropped = [q.update for q in self._queue]
            self._queue.clear()
            self._notify()
            return dropped

    @property
    def pending_updates(self) -> list[dict[str, Any]]:
        """Updates not yet confirmed by the bot."""
        with self._lock:
            return [q.update for q in self._queue]

    # ---------------------------------------------------------------- inspection helpers

    def calls_to(self, method: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def sent_messages(
        self, chat_id: int | None = None, *, include_deleted: bool = False
    ) -> list[dict[str, Any]]:
        """Messages the bot sent, in order, in their *current* state (after edits)."""
        with self._lock:
            return [
                self.messages[key]
                for key in self._bot_message_keys
                if (chat_id is None or key[0] == chat_id)
                and (include_deleted or key not in self._deleted)
            ]

    def message(self, chat_id: int, message_id: int) -> dict[str, Any]:
        """Current state of any message (the bot's or a user's)."""
        with self._lock:
            return self.messages[(chat_id, message_id)]

    def answered_callbacks(self) -> list[dict[str, Any]]:
        """Params of every successful ``answerCallbackQuery``."""
        with self._lock:
            return [c.params for c in self.calls if c.method == "answerCallbackQuery" and c.ok]

    # ---------------------------------------------------------------- waiting (tests)

    def _describe_recent(self) -> str:
        with self._lock:
            recent = [f"{c.method}({c.params})" for c in self.calls[-10:]]
        return "; ".join(recent) or "no calls"

    async def wait_for(self, predicate: Callable[[], T], timeout: float = 10) -> T:
        """Await until ``predicate()`` is truthy; return its value. Re-checked on every fake
        state change and every 50 ms (so predicates on outside state work too)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        event = asyncio.Event()
        waiter = (loop, event)
        with self._lock:
            self._async_waiters.add(waiter)
        try:
            while True:
                event.clear()
                value = predicate()
                if value:
                    return value
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(
                        f"condition not met within {timeout}s; recent calls: "
                        f"{self._describe_recent()}"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(remaining, 0.05))
        finally:
            with self._lock:
                self._async_waiters.discard(waiter)

    async def wait_for_call(self, method: str, count: int = 1, timeout: float = 10) -> list[Call]:
        """Await until ``method`` was called ``count`` times; returns all calls to it."""
        return await self.wait_for(
            lambda: calls if len(calls := self.calls_to(method)) >= count else [], timeout
        )

    def wait_for_sync(self, predicate: Callable[[], T], timeout: float = 10) -> T:
        """Blocking :meth:`wait_for` for tests whose bot runs in another thread / process."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                version = self._version
            value = predicate()  # outside the lock: it may look at anything
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"condition not met within {timeout}s; recent calls: {self._describe_recent()}"
                )
            with self._cond:
                if self._version == version:
                    self._cond.wait(min(remaining, 0.05))

    def wait_for_call_sync(self, method: str, count: int = 1, timeout: float = 10) -> list[Call]:
        return self.wait_for_sync(
            lambda: calls if len(calls := self.calls_to(method)) >= count else [], timeout
        )

    # ---------------------------------------------------------------- request handling

    def handle(
        self,
        method: str,
        token: str,
        params: dict[str, Any],
        files: dict[str, UploadedFile] | None = None,
        *,
        block: bool = True,
    ) -> dict[str, Any]:
        """Handle one Bot API call; returns the response JSON. With ``block`` a ``getUpdates``
        that finds nothing waits (thread-blocking) up to ``min(timeout, max_poll_wait)``."""
        files = files or {}
        with self._cond:
            deadline = time.monotonic() + self._poll_wait(method, params) if block else 0.0
            while True:
                response = self._dispatch(method, token, params, files)
                remaining = deadline - time.monotonic()
                if not self._should_wait(method, response) or remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._record(method, token, params, files, response)
            return response

    async def handle_async(
        self,
        method: str,
        token: str,
        params: dict[str, Any],
        files: dict[str, UploadedFile] | None = None,
    ) -> dict[str, Any]:
        """:meth:`handle` for an event loop: long-polls wait without blocking the loop."""
        files = files or {}
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        waiter = (loop, event)
        deadline = loop.time() + self._poll_wait(method, params)
        try:
            while True:
                with self._lock:
                    self._async_waiters.add(waiter)
                    event.clear()
                    response = self._dispatch(method, token, params, files)
                remaining = deadline - loop.time()
                if not self._should_wait(method, response) or remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), remaining)
        finally:
            with self._lock:
                self._async_waiters.discard(waiter)
        with self._lock:
            self._record(method, token, params, files, response)
        return response

    def _poll_wait(self, method: str, params: dict[str, Any]) -> float:
        if method.lower() != "getupdates":
            return 0.0
        try:
            timeout = float(params.get("timeout") or 0)
        except (TypeError, ValueError):
            timeout = 0.0
        return max(0.0, min(timeout, self.max_poll_wait))

    def _should_wait(self, method: str, response: dict[str, Any]) -> bool:
        return (
            method.lower() == "getupdates"
            and response.get("ok") is True
            and not response["result"]
            and not self._closed
        )

    def _record(
        self,
        method: str,
        token: str,
        params: dict[str, Any],
        files: dict[str, UploadedFile],
        response: dict[str, Any],
    ) -> None:
        if method.lower() == "getupdates":
            self.poll_count += 1
            if not self.record_polls:
                self._notify()
                return
        self.calls.append(Call(method, dict(params), dict(files), token, response=response))
        self._notify()

    def _dispatch(
        self,
        method: str,
        token: str,
        params: dict[str, Any],
        files: dict[str, UploadedFile],
    ) -> dict[str, Any]:
        """Non-blocking handling. Caller holds the lock."""
        if not self._accept_any_token and token != self.token:
            return ApiError("Unauthorized", 401).to_response()
        for i, (failing_method, error) in enumerate(self._injected_errors):
            if failing_method.lower() == method.lower():
                del self._injected_errors[i]
                return error.to_response()
        impl = getattr(self, f"_m_{method.lower()}", None)
        try:
            if impl is None:
                _LOGGER.warning("FakeBotAPI: unknown method %s(%s) -> true", method, params)
                self.unknown_methods.append(method)
                return {"ok": True, "result": True}
            return {"ok": True, "result": impl(params, files)}
        except ApiError as exc:
            return exc.to_response()
        except (KeyError, TypeError, ValueError) as exc:
            return ApiError(f"Bad Request: {type(exc).__name__}: {exc}").to_response()

    def download(self, token: str, file_path: str) -> bytes | None:
        """The ``/file/bot<token>/<file_path>`` route; ``None`` means 404."""
        with self._lock:
            if not self._accept_any_token and token != self.token:
                return None
            for stored in self.files.values():
                if stored.file_path == file_path:
                    return stored.data
            return None

    # ---------------------------------------------------------------- Bot API methods

    def _m_getme(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        return dict(self.bot_user)

    def _m_getupdates(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        offset = params.get("offset")
        if isinstance(offset, int) and offset > 0:
            # Confirm: drop everything below the offset. Offsets only move forward (a redelivered
            # update makes PTB send a lower one once), and a redelivered update is dropped once
            # it has been handed out.
            self._confirmed_offset = max(self._confirmed_offset, offset)
            self._queue = [
                q
                for q in self._queue
                if (
                    q.delivered is False
                    if q.redelivery
                    else q.update["update_id"] >= self._confirmed_offset
                )
            ]
        limit = params.get("limit") or 100
        limit = max(1, min(int(limit), 100))
        # Redelivered updates go first so PTB's next offset (last id + 1) still confirms the rest.
        ordered = [q for q in self._queue if q.redelivery] + [
            q for q in self._queue if not q.redelivery
        ]
        batch = ordered[:limit]
        for q in batch:
            q.delivered = True
        return [json.loads(json.dumps(q.update)) for q in batch]

    def _m_deletewebhook(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        if params.get("drop_pending_updates"):
            self._queue.clear()
        return True

    def _m_getwebhookinfo(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        return {
            "url": "",
            "has_custom_certificate": False,
            "pending_update_count": len(self._queue),
        }

    def _m_setmycommands(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        self.commands = list(params.get("commands") or [])
        return True

    def _m_getmycommands(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        return list(self.commands)

    def _m_deletemycommands(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        self.commands = []
        return True

    def _m_close(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        return True

    def _m_logout(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        return True

    def _m_getfile(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        stored = self.files.get(str(params.get("file_id")))
        if stored is None:
            raise ApiError("Bad Request: invalid file_id")
        if stored.file_size > MAX_DOWNLOAD_SIZE:
            raise ApiError("Bad Request: file is too big")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": stored.file_size,
            "file_path": stored.file_path,
        }

    def _m_sendchataction(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        self._chat(params)
        return True

    def _chat(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = params.get("chat_id")
        chat = self.chats.get(chat_id) if isinstance(chat_id, int) else None
        if chat is None:
            raise ApiError("Bad Request: chat not found")
        return chat

    def _bot_message(self, params: dict[str, Any], **content: Any) -> dict[str, Any]:
        chat = self._chat(params)
        message: dict[str, Any] = {
            "message_id": self._next_message_id(chat["id"]),
            "from": dict(self.bot_user),
            "chat": dict(chat),
            "date": int(time.time()),
            **{k: v for k, v in content.items() if v is not None},
        }
        markup = _normalize_markup(params.get("reply_markup"))
        if markup and "inline_keyboard" in markup:  # reply keyboards are not part of a message
            message["reply_markup"] = markup
        reply = params.get("reply_parameters")
        reply_to = reply.get("message_id") if isinstance(reply, dict) else None
        reply_to = reply_to or params.get("reply_to_message_id")
        if reply_to and (chat["id"], reply_to) in self.messages:
            message["reply_to_message"] = self.messages[(chat["id"], reply_to)]
        key = (chat["id"], message["message_id"])
        self.messages[key] = message
        self._bot_message_keys.append(key)
        return message

    def _m_sendmessage(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        text = params.get("text")
        if not text:
            raise ApiError("Bad Request: message text is empty")
        _check_length(str(text), MAX_TEXT, "message is too long")
        return self._bot_message(params, text=str(text), entities=params.get("entities"))

    def _upload(
        self, params: dict[str, Any], files: dict[str, UploadedFile], name: str, prefix: str
    ) -> tuple[StoredFile, UploadedFile | None]:
        value = params.get(name)
        upload: UploadedFile | None = None
        if isinstance(value, str) and value.startswith("attach://"):
            upload = files.get(value.removeprefix("attach://"))
        elif name in files:
            upload = files[name]
        if upload is not None:
            file_id = self.add_file(upload.data)
            stored = self.files[file_id]
            stored.file_path = f"{prefix}/file_{file_id}_{upload.filename or 'upload'}"
            return stored, upload
        if isinstance(value, str) and value in self.files:
            return self.files[value], None
        raise ApiError("Bad Request: wrong file identifier/HTTP URL specified")

    def _m_sendphoto(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        self._chat(params)
        stored, _ = self._upload(params, files, "photo", "photos")
        width, height = _image_dimensions(stored.data)
        _check_length(str(params.get("caption") or ""), MAX_CAPTION, "message caption is too long")
        photo = [
            {
                "file_id": stored.file_id,
                "file_unique_id": stored.file_unique_id,
                "file_size": stored.file_size,
                "width": width,
                "height": height,
            }
        ]
        return self._bot_message(
            params,
            photo=photo,
            caption=params.get("caption"),
            caption_entities=params.get("caption_entities"),
        )

    def _m_senddocument(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        self._chat(params)
        stored, upload = self._upload(params, files, "document", "documents")
        document = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": stored.file_size,
        }
        if upload is not None:
            document["file_name"] = upload.filename
            document["mime_type"] = upload.content_type or "application/octet-stream"
        return self._bot_message(
            params,
            document=document,
            caption=params.get("caption"),
            caption_entities=params.get("caption_entities"),
        )

    def _target_message(self, params: dict[str, Any], action: str) -> dict[str, Any]:
        if params.get("inline_message_id"):
            raise ApiError("Bad Request: inline messages are not supported by FakeBotAPI")
        key = (params.get("chat_id"), params.get("message_id"))
        message = self.messages.get(key)  # type: ignore[arg-type]
        if message is None or key in self._deleted:
            raise ApiError(f"Bad Request: message to {action} not found")
        return message

    def _m_editmessagetext(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        message = self._target_message(params, "edit")
        text = params.get("text")
        if not text:
            raise ApiError("Bad Request: message text is empty")
        if "text" not in message:
            raise ApiError("Bad Request: there is no text in the message to edit")
        _check_length(str(text), MAX_TEXT, "message is too long")
        markup = _normalize_markup(params.get("reply_markup"))
        if text == message["text"] and markup == message.get("reply_markup"):
            raise ApiError(_NOT_MODIFIED)
        message["text"] = str(text)
        message["edit_date"] = int(time.time())
        _set_entities(message, "entities", params.get("entities"))
        _set_markup(message, markup)
        return message

    def _m_editmessagecaption(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        message = self._target_message(params, "edit")
        caption = params.get("caption")
        markup = _normalize_markup(params.get("reply_markup"))
        if caption == message.get("caption") and markup == message.get("reply_markup"):
            raise ApiError(_NOT_MODIFIED)
        if caption:
            message["caption"] = caption
        else:
            message.pop("caption", None)
        message["edit_date"] = int(time.time())
        _set_entities(message, "caption_entities", params.get("caption_entities"))
        _set_markup(message, markup)
        return message

    def _m_editmessagereplymarkup(
        self, params: dict[str, Any], files: dict[str, UploadedFile]
    ) -> Any:
        message = self._target_message(params, "edit")
        markup = _normalize_markup(params.get("reply_markup"))
        if markup == message.get("reply_markup"):
            raise ApiError(_NOT_MODIFIED)
        message["edit_date"] = int(time.time())
        _set_markup(message, markup)
        return message

    def _m_deletemessage(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        self._target_message(params, "delete")
        self._deleted.add((params["chat_id"], params["message_id"]))
        return True

    def _m_answercallbackquery(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        query_id = str(params.get("callback_query_id"))
        if self._callback_queries.get(query_id, True):  # unknown or already answered
            raise ApiError(_QUERY_TOO_OLD)
        self._callback_queries[query_id] = True
        return True

    # ---------------------------------------------------------------- front ends

    def transport(self) -> httpx.MockTransport:
        """An httpx transport routing requests to this fake (usable by sync and async clients)."""
        return _FakeTransport(self)

    def request(self, **kwargs: Any) -> Any:
        """A PTB ``HTTPXRequest`` using :meth:`transport` (``kwargs`` go to ``HTTPXRequest``)."""
        from telegram.request import HTTPXRequest

        httpx_kwargs = {"transport": self.transport(), **kwargs.pop("httpx_kwargs", {})}
        return HTTPXRequest(httpx_kwargs=httpx_kwargs, **kwargs)

    def application_builder(self, base: str = "http://fake-telegram") -> Any:
        """A PTB ``ApplicationBuilder`` wired to this fake in-process (no sockets)."""
        from telegram.ext import ApplicationBuilder

        return (
            ApplicationBuilder()
            .token(self.token)
            .base_url(f"{base}/bot")
            .base_file_url(f"{base}/file/bot")
            .request(self.request())
            .get_updates_request(self.request())
        )

    @contextlib.asynccontextmanager
    async def running(self, application: Any, *, poll_timeout: float = 1.0) -> AsyncIterator[Any]:
        """Run a PTB Application polling this fake for the duration of the block."""
        await application.initialize()
        await application.start()
        await application.updater.start_polling(poll_interval=0, timeout=poll_timeout)
        try:
            yield application
        finally:
            if application.updater.running:
                await application.updater.stop()
            if application.running:
                await application.stop()
            await application.shutdown()

    @contextlib.contextmanager
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve the fake over real HTTP in a background thread; yields ``http://host:port``."""
        server = _Server((host, port), _make_handler(self))
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="FakeBotAPI-http",
            daemon=True,
        )
        thread.start()
        try:
            yield f"http://{host}:{server.server_address[1]}"
        finally:
            self.close()  # release blocked long-polls
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            with self._lock:
                self._closed = False  # the in-process transport may still be used


def _set_markup(message: dict[str, Any], markup: dict[str, Any] | None) -> None:
    # Editing without reply_markup removes the inline keyboard, as in Telegram.
    if markup:
        message["reply_markup"] = markup
    else:
        message.pop("reply_markup", None)


def _set_entities(message: dict[str, Any], key: str, entities: Any) -> None:
    if entities:
        message[key] = entities
    else:
        message.pop(key, None)


def _image_dimensions(data: bytes) -> tuple[int, int]:
    """Real dimensions when Pillow can read ``data``; else a plausible 1280x960."""
    try:
        import io

        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:
        return 1280, 960


def _json_response(status: int, payload: dict[str, Any]) -> httpx.Response:
    return httpx.Response(status, json=payload)


class _FakeTransport(httpx.MockTransport):
    """MockTransport whose async path long-polls without blocking the event loop."""

    def __init__(self, api: FakeBotAPI) -> None:
        super().__init__(self._sync_handler)
        self.api = api

    def _route(
        self, request: httpx.Request
    ) -> httpx.Response | tuple[str, str, dict[str, Any], dict[str, UploadedFile]]:
        route = _split_path(request.url.path)
        if route is None:
            return _json_response(404, {"ok": False, "error_code": 404, "description": "Not Found"})
        kind, token, tail = route
        if kind == "file":
            data = self.api.download(token, tail)
            if data is None:
                return _json_response(
                    404, {"ok": False, "error_code": 404, "description": "Not Found"}
                )
            return httpx.Response(200, content=data)
        try:
            params, files = parse_request_body(
                request.headers.get("content-type"),
                request.content,
                request.url.query.decode("ascii"),
            )
        except (ValueError, ApiError) as exc:
            return _json_response(400, ApiError(f"Bad Request: {exc}").to_response())
        return tail, token, params, files

    @staticmethod
    def _to_http(response: dict[str, Any]) -> httpx.Response:
        return _json_response(200 if response.get("ok") else response["error_code"], response)

    def _sync_handler(self, request: httpx.Request) -> httpx.Response:
        routed = self._route(request)
        if isinstance(routed, httpx.Response):
            return routed
        return self._to_http(self.api.handle(*routed))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        routed = self._route(request)
        if isinstance(routed, httpx.Response):
            return routed
        return self._to_http(await self.api.handle_async(*routed))


class _Server(http.server.ThreadingHTTPServer):
    """socketserver's listen backlog is 5: several bot processes opening connections at once
    overflow it, and Linux then drops the requests of connections the client thinks are open
    (they end in read errors). Telegram's servers accept them all."""

    request_queue_size = 1024
    daemon_threads = True


def _make_handler(api: FakeBotAPI) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else headers+body writes cost ~40 ms (delayed ACK)

        def log_message(self, format: str, *args: Any) -> None:
            _LOGGER.debug("FakeBotAPI http: " + format, *args)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _send_json(self, status: int, payload: dict[str, Any]) -> None:
            self._send(status, json.dumps(payload).encode(), "application/json")

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            api.stalled_wait()
            route = _split_path(self.path)
            try:
                if route is None:
                    self._send_json(
                        404, {"ok": False, "error_code": 404, "description": "Not Found"}
                    )
                    return
                kind, token, tail = route
                if kind == "file":
                    data = api.download(token, tail)
                    if data is None:
                        self._send_json(
                            404, {"ok": False, "error_code": 404, "description": "Not Found"}
                        )
                    else:
                        self._send(200, data, "application/octet-stream")
                    return
                query = urllib.parse.urlsplit(self.path).query
                try:
                    params, files = parse_request_body(
                        self.headers.get("Content-Type"), body, query
                    )
                except (ValueError, ApiError) as exc:
                    self._send_json(400, ApiError(f"Bad Request: {exc}").to_response())
                    return
                response = api.handle(tail, token, params, files)
                api.stalled_wait()  # a long-poll that was waiting when the API stalled
                self._send_json(200 if response.get("ok") else response["error_code"], response)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the bot went away mid long-poll

        do_GET = _serve
        do_POST = _serve

    return Handler
