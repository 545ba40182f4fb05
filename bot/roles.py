"""What runs beside the platforms in each role (settings.role), started and stopped once.

all: the training schedule, training here; messages a separate trainer left are sent.
worker: no training; votes that make a person due become jobs (bot.retraining's hand-off),
messages a trainer left are sent, and a CLIP fine-tune promoted elsewhere is switched to.
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
    """Serve a fine-tuned CLIP a trainer promoted, without a restart (see follow_backbone)."""
    failed: str | None = None
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), max(every, 1.0))
        try:
            await follow_backbone(services, skip=failed)
        except SwitchFailed as error:  # logged once per version; a restart serves it
            failed = error.version
            log.exception("switching to a CLIP fine-tune promoted elsewhere failed")
        except Exception:  # reading the database: try again at the next check
            log.exception("checking for a CLIP fine-tune promoted elsewhere failed")


class SwitchFailed(RuntimeError):
    def __init__(self, message: str, version: str) -> None:
        super().__init__(message)
        self.version = version


async def follow_backbone(services: Services, skip: str | None = None) -> bool:
    """If a trainer promoted a fine-tuned CLIP this worker does not serve: load it and switch
    to it (its FAISS indexes, heads and crowd model too). The trainer re-embedded every
    retained image before promoting it; images this worker scored since are embedded here
    while new ones wait. True if it switched."""
    from bot.backbone import model_to_load
    from bot.backbone_compare import reembed
    from bot.encoder_loading import load_encoder

    active = await services.store.models.active_global("backbone")
    if active is None or active.encoder_version in (services.encoder_version, skip):
        return False
    old_version, new_version = services.encoder_version, active.encoder_version
    try:
        encoder = await load_encoder(services.settings, await model_to_load(services.settings))
        if encoder.version != new_version:
            raise RuntimeError(f"it loads as {encoder.version}, its row says {new_version}")

        async def embed_what_was_scored_here() -> None:
            store = services.store
            missing = await store.images.retained_images_missing(old_version, new_version)
            await reembed(store, services.data_dir, encoder, images=missing)

        await services.switch_encoder(encoder, embed_what_was_scored_here)
    except Exception as error:  # not retried every check: loading a CLIP takes seconds
        raise SwitchFailed(f"switching to {new_version} failed: {error}", new_version) from error
    log.info("now serving the CLIP fine-tune %s (promoted by a trainer)", encoder.version)
    return True
