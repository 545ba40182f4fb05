"""Telegram updates through the durable inbox (storage/inbox.py): stored, handled, marked done.

Whoever receives updates (the poller, the webhook) calls `Inbox.receive`, which returns once
they are stored, so only then are they confirmed to Telegram. Each update is handled in its
own task, and marked done once PTB has run its handlers to the end (an exception included:
the error handler has answered the person). An update whose process died before that is
taken over when its lease expires, by this process or another one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from telegram import Update

from bot import metrics
from bot.telegram_adapter.context import PLATFORM, TasteApplication

if TYPE_CHECKING:  # storage is the services' business; the adapter is handed the store
    from storage.inbox import InboxStore

log = logging.getLogger(__name__)

# A process that died this many times handling one update would die again: the update is
# given up (marked done, logged) rather than taking every restart down with it.
MAX_ATTEMPTS = 5
REPLAY_PAGE = 100  # abandoned updates taken over per maintenance tick
PURGE_EVERY_SECONDS = 600.0


def worker_id() -> str:
    """This process in the inbox's claimed_by: host and pid, plus a nonce (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def _has_image(update: Update) -> bool:
    message = update.message
    return message is not None and bool(
        message.photo or message.document or message.animation or message.video
    )


class Inbox:
    def __init__(
        self, app: TasteApplication, *, lease_seconds: float, retention_seconds: float
    ) -> None:
        self.app = app
        self.lease = lease_seconds
        self.retention = retention_seconds
        self.worker = worker_id()
        self.store: InboxStore | None = None
        self.accepting = False  # between start and stop: the webhook answers 503 otherwise
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._maintenance: asyncio.Task[None] | None = None

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def start(self, store: InboxStore, *, takeover: bool) -> None:
        """Handle what is left in the inbox, then keep leases fresh and replay what other
        processes abandon. ``takeover``: every undone update is abandoned, whatever its lease
        says (long polling: Telegram lets one process poll, so none other is handling them)."""
        self.store = store
        self.accepting = True
        after: int | None = -1
        while after is not None:
            after = await self.replay(takeover=takeover, after=after)
        self._maintenance = asyncio.create_task(self._maintain(), name="inbox maintenance")

    async def stop(self) -> None:
        """Accept nothing more; let the handlers in flight finish (the caller bounds the wait;
        what it cuts short stays undone in the inbox, for the next start)."""
        self.accepting = False
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
        tasks = list(self._tasks.values())
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            raise

    async def receive(self, payloads: Sequence[Mapping[str, Any]]) -> None:
        """Store the updates, then handle each one not seen before. Raises if storing failed:
        nothing is confirmed to Telegram then, and it delivers them again."""
        assert self.store is not None, "the inbox is started before updates arrive"
        now = time.time()
        pairs = [(int(p["update_id"]), json.dumps(p, separators=(",", ":"))) for p in payloads]
        new = set(
            await self.store.add(
                PLATFORM, pairs, claimed_by=self.worker, now=now, lease_until=now + self.lease
            )
        )
        for update_id, payload in zip((p[0] for p in pairs), payloads, strict=True):
            if update_id in new:
                self._handle(update_id, payload, now)

    def _handle(self, update_id: int, payload: Mapping[str, Any], received_at: float) -> None:
        task = asyncio.create_task(self._process(update_id, dict(payload), received_at))
        self._tasks[update_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(update_id, None))

    async def _process(self, update_id: int, payload: dict[str, Any], received_at: float) -> None:
        assert self.store is not None
        in_flight = metrics.UPDATES_IN_FLIGHT.labels(PLATFORM)
        in_flight.inc()
        try:
            try:
                update = Update.de_json(payload, self.app.bot)
                # Through the update processor: its semaphore bounds the updates handled at
                # once, as PTB's own fetcher does with concurrent_updates.
                await self.app.update_processor.process_update(
                    update, self.app.process_update(update)
                )
                if _has_image(update):
                    metrics.REPLY_SECONDS.labels(PLATFORM).observe(time.time() - received_at)
            except Exception:  # PTB hands handler errors to the error handler; this is worse
                log.exception("update %d could not be handled; not retried", update_id)
            await self.store.mark_done(PLATFORM, update_id, now=time.time())
        except Exception:
            log.exception("update %d: marking it done failed; it will be handled again", update_id)
        finally:
            in_flight.dec()

    async def replay(self, *, takeover: bool = False, after: int = -1) -> int | None:
        """Claim and handle one page of abandoned updates (from the one after ``after`` on);
        where the next page starts, or None when this was the last."""
        assert self.store is not None
        now = time.time()
        # Taking over: every lease ends before this (a lease is at most `lease` long).
        expired_before = now + self.lease + 1 if takeover else now
        rows = await self.store.abandoned(
            PLATFORM, expired_before=expired_before, after=after, limit=REPLAY_PAGE
        )
        for row in rows:
            if row.update_id in self._tasks:
                continue  # ours, still being handled
            claimed = await self.store.claim(
                PLATFORM,
                row.update_id,
                claimed_by=self.worker,
                expired_before=expired_before,
                lease_until=now + self.lease,
            )
            if not claimed:
                continue  # another process was quicker
            if row.attempts >= MAX_ATTEMPTS:
                log.error("update %d: given up after %d attempts", row.update_id, row.attempts)
                await self.store.mark_done(PLATFORM, row.update_id, now=now)
                continue
            log.info("update %d: taken over from the inbox", row.update_id)
            metrics.INBOX_REPLAYED.labels(PLATFORM).inc()
            self._handle(row.update_id, json.loads(row.payload), row.received_at)
        return rows[-1].update_id if len(rows) == REPLAY_PAGE else None

    async def _maintain(self) -> None:
        """Every third of a lease: renew ours, replay others', now and then purge."""
        assert self.store is not None
        last_purge = 0.0
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                now = time.time()
                await self.store.renew(
                    PLATFORM,
                    list(self._tasks),
                    claimed_by=self.worker,
                    lease_until=now + self.lease,
                )
                await self.replay()
                if now - last_purge >= PURGE_EVERY_SECONDS:
                    last_purge = now
                    await self.store.purge_done(done_before=now - self.retention)
            except Exception:  # the database is down: try again next tick
                log.warning("inbox maintenance failed", exc_info=True)
