"""Training handed to trainers: jobs enqueued in the database, one per due point.

A worker enqueues a person once their votes make them due; a trainer's schedule enqueues
everyone due, the crowd model and the CLIP fine-tune. The due key names the point that
made the job due, so two processes noticing the same point enqueue one job between them:
a person's newest vote revision, the newest revision overall (crowd), the cron minute
(fine-tune). Whoever runs the job checks again that it is still due before training.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from domain import User
from storage.store import Store

log = logging.getLogger(__name__)


class TrainingQueue:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    async def enqueue_head(self, user_id: int) -> bool:
        """Queue the person's head; False if this due point (or a job of theirs) is queued."""
        revision = await self.store.votes.latest_revision(user_id)
        added = await self.store.jobs.enqueue("head", user_id, f"r{revision}", self.clock())
        if added:
            log.info("queued a head job for user %d (votes through revision %d)", user_id, revision)
        return added

    async def enqueue_due_heads(self, min_new_votes: int) -> int:
        """Queue everyone with at least ``min_new_votes`` new votes; how many were queued."""
        queued = 0
        for user_id, _ in await self.store.votes.users_with_new_votes(min_new_votes):
            queued += await self.enqueue_head(user_id)
        return queued

    async def enqueue_crowd(self) -> bool:
        revision = await self.store.votes.latest_revision_overall()
        return await self.store.jobs.enqueue("crowd", None, f"r{revision}", self.clock())

    async def enqueue_finetune(self) -> bool:
        """One fine-tune per cron minute, however many trainers run the cron."""
        minute = datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%dT%H:%M")
        return await self.store.jobs.enqueue("finetune", None, minute, self.clock())

    async def enqueue_on_request(self, platform: str, target: str) -> tuple[str, int] | None:
        """/retrain on a worker, which trains nothing itself: queue what the admin asked for
        for a trainer. (what, how many jobs were queued); None for a person never seen."""
        if target == "all":
            return "all", await self.enqueue_due_heads(min_new_votes=1)
        if target == "crowd":
            return "crowd", int(await self.enqueue_crowd())
        if target == "full":
            return "full", int(await self.enqueue_finetune())
        user = await self.store.people.find_user(platform, target)
        if user is None:
            return None
        return "person", int(await self.enqueue_head(user.id))

    async def leave_notice(self, user: User, text: str) -> None:
        """A message for a worker serving the person's platform to send (see NoticeDelivery)."""
        key = hashlib.sha256(f"{self.clock()}:{text}".encode()).hexdigest()[:20]
        await self.store.jobs.enqueue("notify", user.id, key, self.clock(), detail=text)
