"""Messages a trainer left for a worker: "your new taste model is ready".

A trainer serves no chat platform, so it stores each message as a 'notify' job; a worker
(or an all-in-one process) serving the person's platform claims it like any job, so each
message is sent by one process, and sends it. A worker that dies mid-send leaves the
claim to expire, and the message is sent by another (at worst twice, never lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from bot.notifications import Notifications
from storage.store import Store

log = logging.getLogger(__name__)


class NoticeDelivery:
    def __init__(
        self,
        *,
        store: Store,
        notifications: Notifications,
        name: str,
        lease_seconds: float,
        max_attempts: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.notifications = notifications
        self.name = name
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.clock = clock

    async def deliver_waiting(self) -> int:
        """Send every message waiting for a platform this process serves; how many."""
        platforms = sorted(self.notifications.platforms())
        sent = 0
        while platforms and not self.notifications.stopping:
            job = await self.store.jobs.claim(
                self.name,
                kinds=("notify",),
                now=self.clock(),
                lease_seconds=self.lease_seconds,
                max_attempts=self.max_attempts,
                platforms=platforms,
            )
            if job is None:
                break
            user = None if job.user_id is None else await self.store.people.get_user(job.user_id)
            if user is not None and job.detail:  # None: they sent /forget meanwhile
                await self.notifications.send(user, job.detail)
                sent += 1
            await self.store.jobs.finish(job.id, self.name, now=self.clock(), detail=job.detail)
        return sent

    async def run_forever(self, poll_seconds: float, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.deliver_waiting()
            except Exception:  # the database was busy or gone for a moment: try again
                log.exception("delivering messages left by a trainer failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), poll_seconds)
