"""The durable inbox: stored before confirmed, answered once, taken over after a crash."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from pydantic import SecretStr

from bot import render
from bot.runner import Platform, SharedService, serve
from bot.services import Services
from bot.settings import Settings
from bot.telegram_adapter import commands
from bot.telegram_adapter import inbox as inbox_module
from bot.telegram_adapter.app import TelegramPlatform
from learner.encoder import ClipImageEncoder
from storage.connect import open_database
from storage.db import Database
from storage.inbox import InboxStore
from testing.fake_bot_api import FakeBotAPI
from testing.ports import free_port
from tests.conftest import image_bytes, on_both_backends

ALICE = 1


@dataclass
class Running:
    api: FakeBotAPI
    services: Services
    platform: TelegramPlatform


def fake_settings(settings: Settings, api: FakeBotAPI, **changes: object) -> Settings:
    return settings.model_copy(
        update={
            "telegram_bot_token": SecretStr(api.token),
            "telegram_api_url": "http://fake-telegram",
            **changes,
        }
    )


@asynccontextmanager
async def running(
    settings: Settings,
    encoder: ClipImageEncoder,
    api: FakeBotAPI,
    *,
    before: list[Platform] | None = None,
    **platform_kwargs: object,
) -> AsyncIterator[Running]:
    """The real runner and PTB Application against the fake Bot API, in-process."""

    async def open_service() -> Services:
        return await Services.open(settings, encoder)

    shared = SharedService(open_service)
    platform = TelegramPlatform(
        settings, httpx_kwargs={"transport": api.transport()}, **platform_kwargs
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, shared, [*(before or []), platform], stop))
    calls = len(api.calls_to("setMyCommands"))
    await api.wait_for(lambda: len(api.calls_to("setMyCommands")) > calls)
    assert shared.services is not None
    try:
        yield Running(api, shared.services, platform)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


async def open_inbox(settings: Settings) -> tuple[Database, InboxStore]:
    db = await open_database(settings.database())
    return db, InboxStore(db)


async def inbox_rows(services: Services) -> list[tuple[int, str | None, float | None, int]]:
    rows = await services.store.db.fetch_all(
        "SELECT update_id, claimed_by, done_at, attempts FROM inbox ORDER BY update_id"
    )
    return [(int(r[0]), r[1], r[2], int(r[3])) for r in rows]


def replies_to(api: FakeBotAPI, message: dict) -> list[dict]:
    return [
        m
        for m in api.sent_messages(chat_id=message["chat"]["id"])
        if (quoted := m.get("reply_to_message")) and quoted["message_id"] == message["message_id"]
    ]


async def test_a_redelivered_update_is_stored_once(database_url: str) -> None:
    db = await open_database(database_url)
    inbox = InboxStore(db)
    now = time.time()
    args = {"claimed_by": "a", "now": now, "lease_until": now + 30}
    assert await inbox.add("telegram", [(1, "{}"), (2, "{}")], **args) == [1, 2]
    assert await inbox.add("telegram", [(2, "{}"), (3, "{}")], **args) == [3]
    assert await inbox.pending() == 3
    await inbox.mark_done("telegram", 2, now=now)
    assert await inbox.pending() == 2
    assert await inbox.purge_done(done_before=now + 1) == 1
    assert await inbox.add("discord", [(1, "{}")], **args) == [1]  # ids are per platform
    await db.close()


async def test_a_live_lease_is_not_taken_over_an_expired_one_is(database_url: str) -> None:
    db = await open_database(database_url)
    inbox = InboxStore(db)
    now = time.time()
    await inbox.add("telegram", [(7, "{}")], claimed_by="a", now=now, lease_until=now + 30)
    assert await inbox.abandoned("telegram", expired_before=now) == []
    claim = {"claimed_by": "b", "lease_until": now + 60}
    assert not await inbox.claim("telegram", 7, expired_before=now, **claim)
    # Thirty-one seconds later the lease has run out: b gets it, and only once.
    later = now + 31
    [row] = await inbox.abandoned("telegram", expired_before=later)
    assert (row.update_id, row.attempts) == (7, 1)
    assert await inbox.claim("telegram", 7, expired_before=later, **claim)
    assert not await inbox.claim("telegram", 7, expired_before=later, **claim)
    [(claimed_by, attempts)] = await db.fetch_all(
        "SELECT claimed_by, attempts FROM inbox WHERE update_id = 7"
    )
    assert (claimed_by, attempts) == ("b", 2)
    await inbox.mark_done("telegram", 7, now=later)  # a done row is nobody's to claim
    assert not await inbox.claim("telegram", 7, expired_before=later + 1000, **claim)
    await db.close()


@on_both_backends
async def test_an_update_left_in_the_inbox_is_answered_after_a_restart(
    settings: Settings, encoder: ClipImageEncoder
) -> None:
    """The process stored the update, confirmed it to Telegram and died: the next start
    finds it in the inbox and answers it, once."""
    api = FakeBotAPI()
    settings = fake_settings(settings, api)
    update = api.send_photo(ALICE, image_bytes(1))
    assert api.drop_pending() == [update]  # confirmed: Telegram will not send it again
    db, inbox = await open_inbox(settings)
    now = time.time()
    # Its lease is still live: with long polling, no other process can be handling it.
    await inbox.add(
        "telegram",
        [(update["update_id"], json.dumps(update))],
        claimed_by="dead",
        now=now,
        lease_until=now + 30,
    )
    await db.close()
    async with running(settings, encoder, api) as bot:
        await api.wait_for(lambda: replies_to(api, update["message"]))
        await asyncio.sleep(0.5)  # time for a second answer, were there one
        [(_, claimed_by, done_at, attempts)] = await inbox_rows(bot.services)
        assert claimed_by == bot.platform.inbox.worker and attempts == 2
        assert done_at is not None
    assert len(replies_to(api, update["message"])) == 1
    assert "Your score" in replies_to(api, update["message"])[0]["text"]
    api.close()


async def test_updates_are_confirmed_only_once_stored(
    settings: Settings, encoder: ClipImageEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = FakeBotAPI()
    settings = fake_settings(settings, api)
    failures = 2
    real_add = InboxStore.add

    async def failing_add(self: InboxStore, *args: object, **kwargs: object) -> list[int]:
        nonlocal failures
        if failures:
            failures -= 1
            raise OSError("disk full")
        return await real_add(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(InboxStore, "add", failing_add)
    async with running(settings, encoder, api) as bot:
        update = api.send_text(ALICE, "/help")
        await api.wait_for(lambda: failures == 1)
        assert api.pending_updates == [update]  # not stored: not confirmed either
        [reply] = await api.wait_for(lambda: api.sent_messages(chat_id=ALICE), timeout=20)
        assert "Send me an image" in reply["text"]
        await api.wait_for(lambda: not api.pending_updates)
        await asyncio.sleep(0.3)
        assert len(api.sent_messages(chat_id=ALICE)) == 1
        assert [(r[0], r[2] is not None) for r in await inbox_rows(bot.services)] == [
            (update["update_id"], True)
        ]
    api.close()


@on_both_backends
async def test_a_webhook_worker_takes_over_only_expired_leases(
    settings: Settings, encoder: ClipImageEncoder
) -> None:
    """Several workers share the inbox: a row another worker holds a live lease on is left
    alone; once that lease has expired, this worker answers it."""
    api = FakeBotAPI()
    port = free_port()
    settings = fake_settings(
        settings,
        api,
        webhook_url=f"http://127.0.0.1:{port}/hook",
        webhook_listen="127.0.0.1",
        webhook_port=port,
        inbox_lease_seconds=3.0,
    )
    live = api.send_text(ALICE, "/help")
    expired = api.send_text(ALICE, "hello")
    api.drop_pending()
    db, inbox = await open_inbox(settings)
    now = time.time()
    for update, lease_until in ((live, now + 6), (expired, now - 1)):
        await inbox.add(
            "telegram",
            [(update["update_id"], json.dumps(update))],
            claimed_by="other",
            now=now,
            lease_until=lease_until,
        )
    await db.close()
    async with running(settings, encoder, api):
        [first] = await api.wait_for(lambda: api.sent_messages(chat_id=ALICE))
        await asyncio.sleep(1.5)
        assert len(api.sent_messages(chat_id=ALICE)) == 1  # the live lease is respected
        # /help's answer comes once the other worker's lease ran out.
        both = await api.wait_for(
            lambda: m if len(m := api.sent_messages(chat_id=ALICE)) == 2 else None, timeout=15
        )
    assert first["text"] == render.SEND_AN_IMAGE and "/undo" in both[1]["text"]
    assert api.poll_count == 0
    api.close()


async def test_an_albums_updates_are_done_only_once_it_is_answered(
    settings: Settings, encoder: ClipImageEncoder
) -> None:
    """Its first image's handler answers the whole album: were the others done before that
    reply, a kill meanwhile would leave them unanswered for good."""
    api = FakeBotAPI()
    settings = fake_settings(settings, api, album_wait_seconds=1.5)
    async with running(settings, encoder, api) as bot:
        album = [api.send_photo(ALICE, image_bytes(s), media_group_id="a1") for s in (1, 2)]
        await api.wait_for(lambda: not api.pending_updates)
        await asyncio.sleep(0.5)
        assert [row[2] for row in await inbox_rows(bot.services)] == [None, None]
        await api.wait_for(lambda: replies_to(api, album[0]["message"]))
        for _ in range(50):
            if all(row[2] is not None for row in await inbox_rows(bot.services)):
                break
            await asyncio.sleep(0.1)
        assert all(row[2] is not None for row in await inbox_rows(bot.services))
    api.close()


async def test_an_update_cut_short_by_a_stop_is_answered_at_the_next_start(
    settings: Settings, encoder: ClipImageEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = FakeBotAPI()
    settings = fake_settings(settings, api)

    async def stuck(*args: object) -> None:
        await asyncio.sleep(60)  # longer than the runner's shutdown budget

    with monkeypatch.context() as patch:
        patch.setattr(commands, "on_help", stuck)
        async with running(settings, encoder, api) as bot:
            update = api.send_text(ALICE, "/help")
            await api.wait_for(lambda: not api.pending_updates)
            await asyncio.sleep(0.2)
        assert [(r[0], r[2]) for r in await _rows_on_disk(settings)] == [
            (update["update_id"], None)
        ]
    assert api.sent_messages(chat_id=ALICE) == []
    async with running(settings, encoder, api) as bot:
        [reply] = await api.wait_for(lambda: api.sent_messages(chat_id=ALICE))
        assert "/undo" in reply["text"]
        await asyncio.sleep(0.3)
        [(_, _, done_at, attempts)] = await inbox_rows(bot.services)
        assert done_at is not None and attempts == 2
    api.close()


async def _rows_on_disk(settings: Settings) -> list[tuple[int, str | None, float | None]]:
    db, _ = await open_inbox(settings)
    try:
        rows = await db.fetch_all("SELECT update_id, claimed_by, done_at FROM inbox")
    finally:
        await db.close()
    return [(int(r[0]), r[1], r[2]) for r in rows]


async def test_a_restart_takes_over_every_page_of_the_inbox(
    settings: Settings, encoder: ClipImageEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbox_module, "REPLAY_PAGE", 2)
    api = FakeBotAPI()
    settings = fake_settings(settings, api)
    updates = [api.send_text(ALICE, f"hello {n}") for n in range(5)]
    api.drop_pending()
    db, inbox = await open_inbox(settings)
    now = time.time()
    pairs = [(u["update_id"], json.dumps(u)) for u in updates]
    await inbox.add("telegram", pairs, claimed_by="dead", now=now, lease_until=now + 30)
    await db.close()
    async with running(settings, encoder, api):
        await api.wait_for(lambda: len(api.sent_messages(chat_id=ALICE)) == 5)
        await asyncio.sleep(0.3)
    assert len(api.sent_messages(chat_id=ALICE)) == 5
    api.close()
