"""The Discord adapter on real discord.py objects, without Discord's servers.

`FakeDiscord` stands in for both ends of the wire: gateway events are raw payloads
fed to the client's real ConnectionState (`parse_message_create`,
`parse_interaction_create`: the same code a websocket frame reaches), and every
REST call — the bot's HTTPClient and the interaction webhook adapter — lands in
`FakeDiscord.rest`, which records it and answers with a plausible payload.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import discord
import pytest
from aiohttp import web
from discord.webhook.async_ import AsyncWebhookAdapter

from bot.discord_adapter.app import DiscordPlatform, TasteClient, build_client
from bot.discord_adapter.views import encode_vote
from bot.runner import SharedService, serve
from bot.services import Services
from bot.settings import Settings
from bot.telegram_adapter.app import TelegramPlatform
from domain import Vote
from learner.encoder import ClipImageEncoder
from testing.fake_bot_api import FakeBotAPI
from tests.conftest import image_bytes
from tests.test_telegram import BAD_INPUT_IDS, BAD_INPUTS

T = TypeVar("T")

BOT_ID = 900
APP_ID = 901
ADMIN = 1000
ALICE = 1
BOB = 2
GUILD = 500
CHANNEL = 600  # a server channel where the bot is only addressed by mentions
CDN = "https://cdn.discordapp.com/attachments"


def user_payload(user_id: int, *, bot: bool = False) -> dict[str, Any]:
    return {
        "id": str(user_id),
        "username": f"user{user_id}",
        "discriminator": "0",
        "global_name": None,
        "avatar": None,
        "bot": bot,
    }


def dm_channel(user_id: int) -> int:
    return 10_000 + user_id


@dataclass
class Call:
    method: str
    path: str
    body: dict[str, Any]


@dataclass
class FakeDiscord:
    """Discord's REST API and CDN, in-process: records calls, answers with payloads."""

    calls: list[Call] = field(default_factory=list)
    messages: dict[int, dict[str, Any]] = field(default_factory=dict)  # id → message payload
    files: dict[str, bytes] = field(default_factory=dict)  # CDN url → bytes
    attached: dict[int, dict[str, bytes]] = field(default_factory=dict)  # message id → files
    downloads: list[tuple[str, int]] = field(default_factory=list)  # (url, limit)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(700_000))
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def install(self, client: TasteClient, monkeypatch: pytest.MonkeyPatch) -> None:
        fake = self

        async def http_request(
            route: Any, *, files: Any = None, form: Any = None, **kw: Any
        ) -> Any:
            payload = kw.get("json")
            if payload is None and form:  # a message with a file: JSON rides in a form part
                payload = json.loads(next(p["value"] for p in form if p["name"] == "payload_json"))
                payload["_files"] = {f.filename: f.fp.read() for f in files or []}
            return fake.rest(route.method, route.url.removeprefix(discord.http.Route.BASE), payload)

        async def webhook_request(
            adapter: Any,
            route: Any,
            session: Any = None,
            *,
            payload: Any = None,
            multipart: Any = None,
            files: Any = None,
            **kw: Any,
        ) -> Any:
            if payload is None and multipart:  # a response with a file: JSON rides in a form part
                payload = json.loads(
                    next(p["value"] for p in multipart if p["name"] == "payload_json")
                )
                payload["_files"] = {f.filename: f.fp.read() for f in files or []}
            return fake.rest(route.method, route.url.removeprefix(discord.http.Route.BASE), payload)

        async def download(url: str, *, limit: int) -> bytes:
            fake.downloads.append((url, limit))
            return fake.files[url][: limit + 1]

        monkeypatch.setattr(client.http, "request", http_request)
        monkeypatch.setattr(AsyncWebhookAdapter, "request", webhook_request)
        monkeypatch.setattr(client, "download", download)

    # ------------------------------------------------------------------ REST
    def rest(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        self.calls.append(Call(method, path, body or {}))
        self.changed.set()
        if path == "/users/@me":
            return user_payload(BOT_ID, bot=True)
        if path == "/oauth2/applications/@me":
            return {
                "id": str(APP_ID),
                "name": "tastebot",
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": user_payload(ADMIN),
                "verify_key": "0" * 64,
                "flags": 0,
            }
        if path == f"/applications/{APP_ID}/commands" and method == "PUT":
            return [
                {**c, "id": str(next(self.ids)), "application_id": str(APP_ID), "version": "1"}
                for c in body or []
            ]
        if method == "POST" and path.startswith("/channels/") and path.endswith("/messages"):
            channel_id = int(path.split("/")[2])
            return self._store_message(channel_id, body or {})
        if method == "POST" and path.startswith("/interactions/"):
            return {"interaction": {"id": path.split("/")[2], "type": 3}, "resource": None}
        if path.startswith(f"/webhooks/{APP_ID}/"):  # followups and edits of a response
            return self._store_message(0, body or {})
        raise AssertionError(f"unexpected Discord call {method} {path}")

    def _store_message(self, channel_id: int, body: dict[str, Any]) -> dict[str, Any]:
        message = {
            "id": str(next(self.ids)),
            "channel_id": str(channel_id),
            "author": user_payload(BOT_ID, bot=True),
            "content": body.get("content") or "",
            "timestamp": "2026-01-01T00:00:00+00:00",
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": body.get("flags", 0),
            "components": body.get("components", []),
        }
        self.messages[int(message["id"])] = message
        if "_files" in body:  # what the bot attached, by file name
            self.attached[int(message["id"])] = body["_files"]
        return message

    def sent(self, channel_id: int) -> list[dict[str, Any]]:
        return [m for m in self.messages.values() if m["channel_id"] == str(channel_id)]

    def files_of(self, message: dict[str, Any]) -> dict[str, bytes]:
        """The files attached to a message the bot sent."""
        return self.attached.get(int(message["id"]), {})

    def calls_to(self, prefix: str) -> list[Call]:
        return [c for c in self.calls if c.path.startswith(prefix)]

    async def wait_for(self, predicate: Callable[[], T | None], timeout: float = 20) -> T:
        async def poll() -> T:
            while True:
                value = predicate()
                if value:
                    return value
                self.changed.clear()
                with _suppress_timeout():
                    await asyncio.wait_for(self.changed.wait(), 0.05)

        return await asyncio.wait_for(poll(), timeout)


class _suppress_timeout:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, *_: Any) -> bool:
        return kind is TimeoutError


@dataclass
class DiscordHarness:
    client: TasteClient
    api: FakeDiscord
    services: Services
    next_id: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    last_interaction: str = ""

    # ------------------------------------------------------------- gateway
    def message_event(
        self,
        user_id: int,
        *,
        content: str = "",
        attachments: list[dict[str, Any]] = (),  # type: ignore[assignment]
        embeds: list[dict[str, Any]] = (),  # type: ignore[assignment]
        channel_id: int | None = None,
        mention_bot: bool = False,
    ) -> int:
        """A MESSAGE_CREATE from `user_id`, in their DM unless `channel_id` (a server channel)."""
        message_id = 100_000 + next(self.next_id)
        payload: dict[str, Any] = {
            "id": str(message_id),
            "channel_id": str(channel_id or dm_channel(user_id)),
            "author": user_payload(user_id),
            "content": content,
            "timestamp": "2026-01-01T00:00:00+00:00",
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [user_payload(BOT_ID, bot=True)] if mention_bot else [],
            "mention_roles": [],
            "attachments": list(attachments),
            "embeds": list(embeds),
            "pinned": False,
            "type": 0,
        }
        if channel_id is not None:
            payload["guild_id"] = str(GUILD)
            payload["member"] = {"roles": [], "joined_at": "2026-01-01T00:00:00+00:00", "flags": 0}
        self.client._connection.parse_message_create(payload)  # type: ignore[arg-type]
        return message_id

    def attachment(
        self,
        data: bytes,
        *,
        content_type: str | None = "image/jpeg",
        filename: str = "photo.jpg",
        size: int | None = None,
    ) -> dict[str, Any]:
        attachment_id = 200_000 + next(self.next_id)
        url = f"{CDN}/1/{attachment_id}/{filename}"
        self.api.files[url] = data
        payload = {
            "id": str(attachment_id),
            "filename": filename,
            "size": len(data) if size is None else size,
            "url": url,
            "proxy_url": url,
        }
        if content_type:
            payload["content_type"] = content_type
        return payload

    async def send_image(self, user_id: int, data: bytes, **kw: Any) -> dict[str, Any]:
        """Send one image attachment; return the bot's reply."""
        return await self.send_attachments(user_id, [self.attachment(data)], **kw)

    async def send_attachments(
        self, user_id: int, attachments: list[dict[str, Any]], **kw: Any
    ) -> dict[str, Any]:
        """Send a message with these attachments; return the bot's (first new) reply."""
        channel = kw.get("channel_id") or dm_channel(user_id)
        before = len(self.api.sent(channel))
        self.message_event(user_id, attachments=attachments, **kw)
        return (
            await self.api.wait_for(
                lambda: m if len(m := self.api.sent(channel)) > before else None
            )
        )[-1]

    def response_to(self, interaction_id: str) -> dict[str, Any] | None:
        """The interaction's answer: its response, or the followup after a defer."""
        token = f"token-{interaction_id}"
        for call in self.api.calls:
            if call.path.startswith(f"/interactions/{interaction_id}/") and call.body.get(
                "data", {}
            ).get("content"):
                return call.body["data"] | {"_files": call.body.get("_files", {})}
            if call.path.startswith(f"/webhooks/{APP_ID}/{token}") and call.body.get("content"):
                return call.body
        return None

    def interaction_event(
        self,
        user_id: int,
        data: dict[str, Any],
        *,
        kind: int,
        message: dict[str, Any] | None,
        channel_id: int | None,
    ) -> str:
        interaction_id = str(300_000 + next(self.next_id))
        payload: dict[str, Any] = {
            "id": interaction_id,
            "application_id": str(APP_ID),
            "type": kind,
            "token": f"token-{interaction_id}",
            "version": 1,
            "data": data,
            "locale": "en-US",
            "app_permissions": "0",
            "entitlements": [],
            "attachment_size_limit": 10 * 1024 * 1024,
            "authorizing_integration_owners": {"0": str(GUILD)}
            if channel_id
            else {"1": str(user_id)},
        }
        if channel_id is None:
            payload["channel"] = {
                "id": str(dm_channel(user_id)),
                "type": 1,
                "recipients": [user_payload(user_id)],
            }
            payload["channel_id"] = str(dm_channel(user_id))
            payload["user"] = user_payload(user_id)
            payload["context"] = 1
        else:
            payload["guild_id"] = str(GUILD)
            payload["channel"] = {
                "id": str(channel_id),
                "type": 0,
                "name": "general",
                "position": 0,
                "guild_id": str(GUILD),
                "permission_overwrites": [],
                "nsfw": False,
            }
            payload["channel_id"] = str(channel_id)
            payload["member"] = {
                "user": user_payload(user_id),
                "roles": [],
                "joined_at": "2026-01-01T00:00:00+00:00",
                "permissions": "0",
                "deaf": False,
                "mute": False,
                "flags": 0,
            }
            payload["context"] = 0
        if message is not None:
            payload["message"] = message
        self.client._connection.parse_interaction_create(payload)  # type: ignore[arg-type]
        return interaction_id

    async def press(
        self, user_id: int, reply: dict[str, Any], vote: Vote, *, channel_id: int | None = None
    ) -> dict[str, Any]:
        """Press a vote button on `reply`; return the interaction response's body."""
        custom_id = encode_vote(submission_id(reply), vote)
        interaction_id = self.interaction_event(
            user_id,
            {"custom_id": custom_id, "component_type": 2},
            kind=3,
            message=reply,
            channel_id=channel_id,
        )
        calls = await self.api.wait_for(
            lambda: self.api.calls_to(f"/interactions/{interaction_id}/")
        )
        return calls[0].body

    async def command(
        self, user_id: int, name: str, *, channel_id: int | None = None, **options: str | int
    ) -> str:
        """A slash command; the text the person sees (the response or its followup)."""
        reply = await self.slash(user_id, name, channel_id=channel_id, **options)
        return str(reply["content"])

    async def slash(
        self, user_id: int, name: str, *, channel_id: int | None = None, **options: str | int
    ) -> dict[str, Any]:
        """`options` are the command's: a str is a string option (type 3), an int an integer (4)."""
        data: dict[str, Any] = {"id": "1", "name": name, "type": 1}
        if options:
            data["options"] = [
                {"name": key, "type": 4 if isinstance(value, int) else 3, "value": value}
                for key, value in options.items()
            ]
        interaction_id = self.interaction_event(
            user_id,
            data,
            kind=2,
            message=None,
            channel_id=channel_id,
        )
        self.last_interaction = interaction_id
        return await self.api.wait_for(lambda: self.response_to(interaction_id), timeout=30)


def submission_id(reply: dict[str, Any]) -> int:
    return int(reply["components"][0]["components"][0]["custom_id"].split(":")[2])


def labels(components: list[dict[str, Any]]) -> list[str]:
    return [b["label"] for b in components[0]["components"]]


def discord_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "telegram_bot_token": None,
            "discord_bot_token": type(settings.telegram_bot_token)("discord-token"),
            "discord_admin_ids": frozenset({ADMIN}),
        }
    )


async def start_discord(
    settings: Settings, service: Services, monkeypatch: pytest.MonkeyPatch
) -> DiscordHarness:
    client = build_client(discord_settings(settings))
    api = FakeDiscord()
    api.install(client, monkeypatch)
    await client.login("discord-token")  # getMe, application info, setup_hook (buttons, commands)
    client.attach(service)
    return DiscordHarness(client, api, service)


@pytest.fixture
async def discord_bot(
    settings: Settings, service: Services, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[DiscordHarness]:
    bot = await start_discord(settings, service, monkeypatch)
    try:
        yield bot
    finally:
        await bot.client.close()


# ---------------------------------------------------------------------------- tests


async def test_start_registers_commands_and_persistent_buttons(discord_bot: DiscordHarness) -> None:
    synced = discord_bot.api.calls_to(f"/applications/{APP_ID}/commands")
    assert sorted(c["name"] for c in synced[0].body) == [
        "export",
        "forget",
        "help",
        "models",
        "retrain",
        "rollback",
        "stats",
    ]  # type: ignore[index]
    # Buttons are answered by their custom_id's template, so any earlier run's buttons work.
    assert discord_bot.client._connection._view_store._dynamic_items


async def test_attachment_is_scored_with_buttons_and_votes_are_recorded(
    discord_bot: DiscordHarness,
) -> None:
    bot = discord_bot
    reply = await bot.send_image(ALICE, image_bytes(1))
    assert "Your score: 50% · cold start" in reply["content"]
    assert labels(reply["components"]) == ["👎 Dislike", "👍 Like", "⭐ Super like"]
    assert bot.api.downloads[0][1] == bot.client.settings.max_image_bytes

    # In a DM the press is acknowledged by editing the buttons to show the choice.
    response = await bot.press(ALICE, reply, Vote.LIKE)
    assert response["type"] == 7  # UPDATE_MESSAGE: acknowledges and edits in one call
    assert labels(response["data"]["components"]) == ["👎 Dislike", "✓ 👍 Like", "⭐ Super like"]
    user = await bot.services.store.people.get_or_create_user("discord", str(ALICE))
    counts = await bot.services.store.people.user_counts(user.id)
    assert (counts.images, counts.likes) == (1, 1)

    # A changed vote replaces the old one; pressing the same again changes nothing twice.
    await bot.press(ALICE, reply, Vote.SUPER_LIKE)
    await bot.press(ALICE, reply, Vote.SUPER_LIKE)
    rows = await bot.services.store.db.fetch_all("SELECT vote, revision FROM feedback")
    assert [tuple(r) for r in rows] == [("super_like", 2)]


async def test_an_image_sent_again_shows_the_earlier_vote_and_changes_it(
    discord_bot: DiscordHarness,
) -> None:
    bot = discord_bot
    first = await bot.send_image(ALICE, image_bytes(7))
    await bot.press(ALICE, first, Vote.SUPER_LIKE)
    again = await bot.send_image(ALICE, image_bytes(7))
    assert "You rated this before: ⭐ Super like (this picture)" in again["content"]
    assert list(bot.api.files_of(again).values()) == [image_bytes(7)]  # the picture it matched
    assert labels(again["components"]) == ["👎 Dislike", "👍 Like", "✓ ⭐ Super like"]
    assert submission_id(again) == submission_id(first)  # the buttons act on that vote
    await bot.press(ALICE, again, Vote.DISLIKE)
    rows = await bot.services.store.db.fetch_all("SELECT submission_id, vote FROM feedback")
    assert [tuple(r) for r in rows] == [(submission_id(first), "dislike")]  # one image, one vote


async def test_server_channel_needs_a_mention_and_votes_are_per_presser(
    discord_bot: DiscordHarness,
) -> None:
    bot = discord_bot
    bot.message_event(ALICE, attachments=[bot.attachment(image_bytes(2))], channel_id=CHANNEL)
    await asyncio.sleep(0.3)
    assert bot.api.sent(CHANNEL) == []  # not addressed to the bot: ignored, nothing downloaded
    assert bot.api.downloads == []

    reply = await bot.send_image(ALICE, image_bytes(2), channel_id=CHANNEL, mention_bot=True)
    # In a channel everyone sees the message: no one's score in it, each presser gets their
    # own score and their confirmation privately.
    assert "Your score" not in reply["content"] and "My score" in reply["content"]
    buttons = reply["components"][0]["components"]
    assert [b["label"] for b in buttons][-1] == "🔒 My score"
    mine = bot.interaction_event(
        BOB,
        {"custom_id": buttons[-1]["custom_id"], "component_type": 2},
        kind=3,
        message=reply,
        channel_id=CHANNEL,
    )
    calls = await bot.api.wait_for(lambda: bot.api.calls_to(f"/interactions/{mine}/"))
    answer = calls[0].body
    assert answer["type"] == 4 and answer["data"]["content"].startswith("Your score: ")
    assert answer["data"]["flags"] == discord.MessageFlags(ephemeral=True).value
    alice = await bot.press(ALICE, reply, Vote.LIKE, channel_id=CHANNEL)
    bob = await bot.press(BOB, reply, Vote.DISLIKE, channel_id=CHANNEL)
    for response, text in ((alice, "Saved: 👍 Like"), (bob, "Saved: 👎 Dislike")):
        assert response["type"] == 4 and response["data"]["content"] == text
        assert response["data"]["flags"] == discord.MessageFlags(ephemeral=True).value
    rows = await bot.services.store.db.fetch_all(
        "SELECT u.platform, u.platform_user_id, f.vote"
        " FROM feedback f JOIN users u ON u.id = f.user_id"
        " ORDER BY u.platform_user_id"
    )
    assert [tuple(r) for r in rows] == [("discord", "1", "like"), ("discord", "2", "dislike")]


async def test_configured_channel_scores_without_a_mention(
    settings: Settings, service: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings.model_copy(update={"discord_channel_ids": frozenset({CHANNEL})})
    bot = await start_discord(settings, service, monkeypatch)
    try:
        reply = await bot.send_image(ALICE, image_bytes(3), channel_id=CHANNEL)
        assert "My score" in reply["content"] and reply["components"]
    finally:
        await bot.client.close()


async def test_image_embed_of_an_uploaded_file_is_scored(discord_bot: DiscordHarness) -> None:
    bot = discord_bot
    url = f"{CDN}/1/2/cat.png"
    bot.api.files[url] = image_bytes(4, fmt="PNG")
    bot.message_event(
        ALICE,
        content=url,
        embeds=[
            {"type": "image", "url": url, "thumbnail": {"url": url, "width": 96, "height": 64}},
            # Not an upload to Discord: never fetched.
            {"type": "image", "url": "https://example.com/x.png"},
        ],
    )
    replies = await bot.api.wait_for(lambda: bot.api.sent(dm_channel(ALICE)))
    assert "Your score" in replies[0]["content"]
    await asyncio.sleep(0.2)
    assert [u for u, _ in bot.api.downloads] == [url]


async def test_several_images_in_one_message_each_get_a_reply(discord_bot: DiscordHarness) -> None:
    bot = discord_bot
    bot.message_event(
        ALICE, attachments=[bot.attachment(image_bytes(s), filename=f"{s}.jpg") for s in (5, 6)]
    )
    replies = await bot.api.wait_for(
        lambda: m if len(m := bot.api.sent(dm_channel(ALICE))) == 2 else None
    )
    assert len({submission_id(r) for r in replies}) == 2


async def test_files_are_scored_by_their_bytes_and_videos_refused_in_words(
    discord_bot: DiscordHarness,
) -> None:
    bot = discord_bot
    for content_type in ("application/octet-stream", None):
        attachment = bot.attachment(image_bytes(21), content_type=content_type, filename="IMG_1")
        reply = await bot.send_attachments(ALICE, [attachment])
        assert "Your score" in reply["content"], (content_type, reply["content"])
    downloads = len(bot.api.downloads)
    video = bot.attachment(b"\x00\x00\x00\x18ftypmp42", content_type="video/mp4", filename="a.mp4")
    reply = await bot.send_attachments(ALICE, [video])
    assert "video" in reply["content"] and not reply["components"]
    assert len(bot.api.downloads) == downloads  # refused without downloading it


@pytest.mark.parametrize(
    ("data", "content_type", "name", "claimed", "expected"), BAD_INPUTS, ids=BAD_INPUT_IDS
)
async def test_bad_input_gets_one_sentence_and_stores_nothing(
    discord_bot: DiscordHarness,
    data: bytes,
    content_type: str,
    name: str,
    claimed: int | None,
    expected: str,
) -> None:
    bot = discord_bot
    bot.message_event(
        ALICE,
        attachments=[bot.attachment(data, content_type=content_type, filename=name, size=claimed)],
    )
    replies = await bot.api.wait_for(lambda: bot.api.sent(dm_channel(ALICE)))
    assert expected in replies[0]["content"], replies[0]["content"]
    assert not replies[0]["components"]
    if claimed is not None:
        assert bot.api.downloads == []  # refused before downloading
    for table in ("images", "embeddings", "submissions"):
        rows = await bot.services.store.db.fetch_all(f"SELECT COUNT(*) FROM {table}")
        assert rows[0][0] == 0, table
    assert "Your score" in (await bot.send_image(ALICE, image_bytes(9)))["content"]


async def test_bounded_download_never_reads_a_whole_oversized_file(
    settings: Settings,
) -> None:
    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(100):  # 6.4 MB, but the client stops after the limit
            await response.write(b"\0" * 65536)
        return response

    app = web.Application()
    app.router.add_get("/big", big)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = build_client(discord_settings(settings))
    try:
        data = await client.download(f"http://127.0.0.1:{port}/big", limit=100_000)
        assert len(data) == 100_001  # one byte over: the core refuses it as too large
    finally:
        await client.close()
        await runner.cleanup()


async def test_slow_commit_is_acknowledged_within_discords_3_seconds(
    discord_bot: DiscordHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot = discord_bot
    reply = await bot.send_image(ALICE, image_bytes(7))
    original = bot.services.votes.record_vote
    release = asyncio.Event()

    async def slow_vote(*args: Any, **kwargs: Any) -> Any:
        await release.wait()
        return await original(*args, **kwargs)

    monkeypatch.setattr(bot.services.votes, "record_vote", slow_vote)
    monkeypatch.setattr("bot.discord_adapter.handlers.ACK_WITHIN_S", 0.1)
    response = await bot.press(ALICE, reply, Vote.LIKE)
    assert response["type"] == 6  # DEFERRED_UPDATE_MESSAGE: acknowledged before the commit
    release.set()
    edit = await bot.api.wait_for(lambda: bot.api.calls_to(f"/webhooks/{APP_ID}/"))
    assert edit[0].method == "PATCH" and "✓ 👍 Like" in labels(edit[0].body["components"])


async def test_stats_and_retrain_are_slash_commands(discord_bot: DiscordHarness) -> None:
    bot = discord_bot
    assert "No taste model yet" in await bot.command(ALICE, "stats")
    assert await bot.command(ALICE, "retrain") == "Only the bot's admins can use /retrain."
    assert "Nobody has new votes" in await bot.command(ADMIN, "retrain")
    assert "All users: " in await bot.command(ADMIN, "stats")
    assert "Send me an image" in await bot.command(ALICE, "help")


async def test_admin_lists_and_rolls_back_a_discord_persons_models(
    discord_bot: DiscordHarness,
) -> None:
    bot = discord_bot
    replies = [await bot.send_image(ALICE, image_bytes(seed)) for seed in range(1, 13)]
    for n, reply in enumerate(replies):
        await bot.press(ALICE, reply, Vote.LIKE if n % 2 == 0 else Vote.DISLIKE)
    assert "v1 promoted" in await bot.command(ADMIN, "retrain")
    for reply in replies[:6]:  # flip the first six votes: something new to learn
        await bot.press(ALICE, reply, Vote.SUPER_LIKE)
    assert "v2" in await bot.command(ADMIN, "retrain")
    alice = await bot.services.store.people.find_user("discord", str(ALICE))
    assert alice is not None

    async def active_version() -> int | None:
        active = await bot.services.store.models.active_model(alice.id)
        return None if active is None else active.version

    listing = await bot.slash(ADMIN, "models", user=str(ALICE))
    assert listing["flags"] & 64  # ephemeral: only the admin sees it
    text = listing["content"]
    assert text.startswith(f"Models of user {ALICE}:") and "v1 " in text and "v2 " in text
    assert text.count("\n") == 2 and len(text) <= 2000
    # A mention or a bare id; the version as an integer option.
    rolled = await bot.slash(ADMIN, "rollback", user=f"<@{ALICE}>", version=2)
    assert rolled["content"] == f"User {ALICE} now uses model v2." and rolled["flags"] & 64
    assert await active_version() == 2
    assert await bot.command(ADMIN, "rollback", user=f"<@!{ALICE}>", version=1) == (
        f"User {ALICE} now uses model v1."
    )
    assert await active_version() == 1
    assert "· model v1" in (await bot.send_image(ALICE, image_bytes(50)))["content"]
    assert await bot.command(ADMIN, "rollback", user=str(ALICE), version=9) == (
        f"User {ALICE} has no model v9."
    )
    # Discord's people only: nobody on Discord has this id.
    assert await bot.command(ADMIN, "models", user="424242") == "I don't know user 424242."
    usage = "Give a Discord user: a mention, their user id, or @their-username."
    assert await bot.command(ADMIN, "models", user="alice") == usage
    assert await bot.command(ADMIN, "rollback", user="<@x1>", version=1) == usage
    assert await active_version() == 1


async def test_models_and_rollback_refuse_non_admins(discord_bot: DiscordHarness) -> None:
    bot = discord_bot
    refusal = "Only the bot's admins can use /{}."
    replies = [await bot.send_image(ALICE, image_bytes(seed)) for seed in range(1, 13)]
    for n, reply in enumerate(replies):
        await bot.press(ALICE, reply, Vote.LIKE if n % 2 == 0 else Vote.DISLIKE)
    assert "v1 promoted" in await bot.command(ADMIN, "retrain")
    listing = await bot.slash(ALICE, "models", user=str(ALICE))
    assert listing["content"] == refusal.format("models") and listing["flags"] & 64
    rollback = await bot.command(BOB, "rollback", user=str(ALICE), version=1)
    assert rollback == refusal.format("rollback")
    models = await bot.command(ALICE, "models", user=str(ALICE), channel_id=CHANNEL)
    assert models == refusal.format("models")
    alice = await bot.services.store.people.find_user("discord", str(ALICE))
    assert alice is not None
    versions = await bot.services.store.models.model_versions(alice.id)
    assert [(m.version, m.status) for m in versions] == [(1, "active")]


async def test_buttons_keep_working_after_a_restart(
    settings: Settings, encoder: ClipImageEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    first_service = await Services.open(settings, encoder)
    first = await start_discord(settings, first_service, monkeypatch)
    reply = await first.send_image(ALICE, image_bytes(8))
    await first.client.close()
    await first_service.close()

    # A new process: a new client and service over the same data; the old message's button.
    second_service = await Services.open(settings, encoder)
    second = await start_discord(settings, second_service, monkeypatch)
    try:
        response = await second.press(ALICE, reply, Vote.DISLIKE)
        assert "✓ 👎 Dislike" in labels(response["data"]["components"])
        rows = await second_service.store.db.fetch_all("SELECT vote FROM feedback")
        assert [r[0] for r in rows] == ["dislike"]
    finally:
        await second.client.close()
        await second_service.close()


# ------------------------------------------------------------- one core, two platforms


async def test_discord_and_telegram_fill_the_same_tables_and_retrain_the_same_way(
    settings: Settings, encoder: ClipImageEncoder, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """The same votes through each adapter, each in a fresh data dir: identical rows, models."""
    from tests.test_telegram import running_bot

    seeds = list(range(1, 13))
    votes = [Vote.LIKE if s % 2 == 0 else Vote.DISLIKE for s in seeds]

    tg_settings = settings.model_copy(update={"data_dir": tmp_path / "telegram"})
    async with running_bot(tg_settings, encoder) as tg:
        for seed, vote in zip(seeds, votes, strict=True):
            reply = await tg.send_photo(ALICE, image_bytes(seed))
            await tg.vote(ALICE, reply, vote)
        tg.api.send_text(ADMIN, "/retrain")  # answered by editing a progress message
        await tg.api.wait_for(
            lambda: any(
                "v1 promoted" in m.get("text", "") for m in tg.api.sent_messages(chat_id=ADMIN)
            ),
            timeout=30,
        )
        telegram_tables = await dump_tables(tg.services)

    dc_settings = settings.model_copy(update={"data_dir": tmp_path / "discord"})
    dc_service = await Services.open(dc_settings, encoder)
    dc = await start_discord(dc_settings, dc_service, monkeypatch)
    try:
        for seed, vote in zip(seeds, votes, strict=True):
            reply = await dc.send_image(ALICE, image_bytes(seed))
            await dc.press(ALICE, reply, vote)
        assert "v1 promoted" in await dc.command(ADMIN, "retrain")
        discord_tables = await dump_tables(dc_service)
    finally:
        await dc.client.close()
        await dc_service.close()

    assert telegram_tables["users"] == [("telegram", "1")]
    assert discord_tables["users"] == [("discord", "1")]
    for table in ("submissions", "feedback", "model_versions", "training_runs"):
        assert discord_tables[table] == telegram_tables[table], table
    assert len(discord_tables["feedback"]) == 12
    assert discord_tables["model_versions"][0][:2] == (1, "active")


async def dump_tables(service: Services) -> dict[str, list[tuple[Any, ...]]]:
    queries = {
        "users": "SELECT platform, platform_user_id FROM users ORDER BY id",
        "submissions": "SELECT id, user_id, image_id, score, model_version_id"
        " FROM submissions ORDER BY id",
        "feedback": "SELECT user_id, submission_id, vote, revision"
        " FROM feedback ORDER BY submission_id",
        "model_versions": "SELECT version, status, train_size, holdout_size, metrics_json"
        " FROM model_versions",
        "training_runs": "SELECT trigger, outcome, n_labels, detail FROM training_runs",
    }
    out = {}
    for table, sql in queries.items():
        rows = [tuple(r) for r in await service.store.db.fetch_all(sql)]
        if table == "model_versions":  # wall-clock time is the one thing allowed to differ
            rows = [(*r[:-1], {**json.loads(r[-1]), "train_seconds": None}) for r in rows]
        out[table] = rows
    return out


async def test_both_platforms_run_in_one_loop_on_one_core(
    settings: Settings, encoder: ClipImageEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve` with both tokens, as `python -m bot`: one core, one scheduler, two adapters."""
    telegram_api = FakeBotAPI()
    both = discord_settings(settings).model_copy(
        update={
            "telegram_bot_token": type(settings.telegram_bot_token)(telegram_api.token),
            "telegram_api_url": "http://fake-telegram",
        }
    )
    opened: list[Services] = []

    async def open_service() -> Services:
        opened.append(await Services.open(both, encoder))
        return opened[-1]

    shared = SharedService(open_service)
    telegram = TelegramPlatform(both, httpx_kwargs={"transport": telegram_api.transport()})
    discord_platform = DiscordPlatform(both, sync_commands=False)
    discord_api = FakeDiscord()
    discord_api.install(discord_platform.client, monkeypatch)

    async def no_gateway(*, reconnect: bool) -> None:
        await asyncio.Event().wait()  # the websocket is not faked: events come from the tests

    monkeypatch.setattr(discord_platform.client, "connect", no_gateway)
    stop = asyncio.Event()
    running = asyncio.create_task(serve(both, shared, [telegram, discord_platform], stop))
    try:
        await telegram_api.wait_for(lambda: discord_platform.task is not None, timeout=30)
        service = opened[0]
        dc = DiscordHarness(discord_platform.client, discord_api, service)
        reply = await dc.send_image(ALICE, image_bytes(1))
        await dc.press(ALICE, reply, Vote.LIKE)

        before = len(telegram_api.sent_messages(chat_id=ALICE))
        telegram_api.send_photo(ALICE, image_bytes(1))
        tg_reply = await telegram_api.wait_for(
            lambda: m[-1] if len(m := telegram_api.sent_messages(chat_id=ALICE)) > before else None
        )
        assert "Your score" in tg_reply["text"]
        assert service.notifications.platforms() == {"telegram", "discord"}
        rows = await service.store.db.fetch_all(
            "SELECT platform, platform_user_id FROM users ORDER BY platform"
        )
        assert [tuple(r) for r in rows] == [("discord", "1"), ("telegram", "1")]  # two people
        # One image content, embedded once, shared by both people's submissions.
        images = await service.store.db.fetch_all("SELECT COUNT(*) FROM images")
        assert images[0][0] == 1
    finally:
        stop.set()
        await asyncio.wait_for(running, 15)
        telegram_api.close()
    assert len(opened) == 1
    assert discord_platform.client.is_closed()


async def test_stats_chart_export_and_forget(discord_bot: DiscordHarness) -> None:
    bot = discord_bot
    reply = await bot.send_image(ALICE, image_bytes(11))
    await bot.press(ALICE, reply, Vote.LIKE)

    stats = await bot.slash(ALICE, "stats")
    assert "learning-curve.png" in stats["_files"]
    assert stats["_files"]["learning-curve.png"].startswith(b"\x89PNG")
    assert stats["flags"] & discord.MessageFlags(ephemeral=True).value

    export = await bot.slash(ALICE, "export")
    rows = json.loads(export["_files"]["tastebot-export.json"])["submissions"]
    assert len(rows) == 1 and export["content"] == "Your data: 1 image you sent, with your votes."

    prompt = await bot.slash(ALICE, "forget")
    assert "cannot be undone" in prompt["content"]
    confirm = prompt["components"][0]["components"][0]
    # The confirmation is an ephemeral message: its button press comes back with it.
    message = bot.api._store_message(dm_channel(ALICE), prompt)
    pressed = bot.interaction_event(
        ALICE,
        {"custom_id": confirm["custom_id"], "component_type": 2},
        kind=3,
        message=message,
        channel_id=None,
    )
    done = await bot.api.wait_for(lambda: bot.api.calls_to(f"/interactions/{pressed}/"))
    assert done[0].body["data"]["content"].startswith("Deleted: 1 image you sent, 1 vote,")
    rows = await bot.services.store.db.fetch_all(
        "SELECT COUNT(*) FROM users WHERE platform = 'discord'"
    )
    assert rows[0][0] == 0
