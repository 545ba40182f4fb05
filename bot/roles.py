"""What runs beside the platforms in each role (settings.role), started and stopped once.

all: the training schedule, training here; messages a separate trainer left are sent.
worker: no training; votes that make a person due become jobs (bot.retraining's hand-off),
messages a trainer left are sent, and a CLIP fine-tune promoted elsewhere is logged.
trainer: the schedule enqueues what is due; one loop claims and runs jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.scheduler import start_scheduler
from bot.services import Services
from bot.settings import Settings

log = logging.getLogger(__name__)


class RoleTasks:
    """The scheduler (all, trainer) and background loops of one role."""

    def __init__(self, scheduler: AsyncIOScheduler | None) -> None:
        self.scheduler = scheduler
        self.stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []

    def loop(self, work: Coroutine[Any, Any, None], name: str) -> None:
        self._loops.append(asyncio.create_task(work, name=name))

    def pause(self) -> None:
        """No new jobs: the scheduler's ticks stop, the loops stop between two jobs."""
        self.stopping.set()
        if self.scheduler is not None:
            self.scheduler.pause()

    async def stop(self, timeout: float) -> None:
        self.pause()
        if self._loops:
            _, pending = await asyncio.wait(self._loops, timeout=timeout)
            for task in pending:  # a job mid-training: its lease expires, another takes it
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)


def start_role(services: Services, settings: Settings) -> RoleTasks:
    role = settings.role
    trains_here = role in ("all", "trainer")
    tasks = RoleTasks(start_scheduler(services, settings) if trains_here else None)
    if role == "trainer":
        tasks.loop(services.jobs.run_forever(settings.job_poll_seconds, tasks.stopping), "jobs")
    else:
        notices = services.notices.run_forever(settings.job_poll_seconds, tasks.stopping)
        tasks.loop(notices, "notices")
    if role == "worker":
        tasks.loop(watch_backbone(services, settings.model_refresh_seconds, tasks.stopping), "clip")
    log.info("role %s", role)
    return tasks


async def watch_backbone(services: Services, every: float, stopping: asyncio.Event) -> None:
    """Say once when a trainer promoted a fine-tuned CLIP: a worker serves it after a
    restart (loading it and re-embedding here is the trainer's work, not a worker's)."""
    warned: str | None = None
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), max(every, 1.0))
        try:
            active = await services.store.models.active_global("backbone")
        except Exception:
            log.exception("checking for a new CLIP fine-tune failed")
            continue
        version = None if active is None else active.encoder_version
        if version is not None and version not in (services.encoder_version, warned):
            log.warning(
                "a fine-tuned CLIP (%s) was promoted elsewhere; restart this worker to serve "
                "it (until then people's heads for it are not used here)",
                version,
            )
            warned = version
