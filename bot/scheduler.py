"""The scheduled retrain: APScheduler 3 on the bot's event loop.

In one process (role all) each tick trains; on a trainer it only enqueues what is due
(bot.training_jobs), and the trainer's job loop (bot.trainer) runs it: with several
trainers, each tick of each enqueues the same due points, which are one job each.
"""

from __future__ import annotations

import logging
import time

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.cron import crontab_trigger
from bot.services import Services
from bot.settings import Settings

log = logging.getLogger(__name__)


async def retrain_tick(services: Services, min_new_votes: int) -> None:
    """Retrain every person with enough new votes; the training itself runs off the loop."""
    outcomes = await services.retraining.retrain_due_heads(min_new_votes, trigger="schedule")
    if outcomes:
        promoted = sum(o.promoted for o in outcomes)
        log.info("scheduled retrain: %d trained, %d promoted", len(outcomes), promoted)


async def finetune_tick(services: Services) -> None:
    """Fine-tune CLIP when enough votes with retained images have come in since the last time."""
    tuner = services.backbone
    if tuner.running:
        return
    why_not = await tuner.why_not_due()
    if why_not is not None:
        log.info("scheduled fine-tune skipped: %s", why_not)
        return
    outcome = await tuner.run("schedule")
    log.info("scheduled fine-tune: %s", outcome.reason)


async def crowd_tick(services: Services) -> None:
    """Train the crowd model when enough new votes have come in since the last one."""
    why_not = await services.crowd_training.why_not_due()
    if why_not is not None:
        log.debug("crowd model not due: %s", why_not)
        return
    outcome = await services.crowd_training.retrain("schedule")
    log.info("scheduled crowd model: %s", outcome.reason)


async def enqueue_heads_tick(services: Services, min_new_votes: int) -> None:
    """Queue every person with enough new votes for a trainer."""
    queued = await services.queue.enqueue_due_heads(min_new_votes)
    if queued:
        log.info("scheduled retrain: %d head job(s) queued", queued)


async def enqueue_crowd_tick(services: Services) -> None:
    if await services.crowd_training.why_not_due() is None:
        await services.queue.enqueue_crowd()


async def enqueue_finetune_tick(services: Services) -> None:
    # Checked again by whoever claims the job: a fine-tune takes long, and due changes.
    why_not = await services.backbone.why_not_due()
    if why_not is not None:
        log.info("scheduled fine-tune skipped: %s", why_not)
        return
    await services.queue.enqueue_finetune()


# Finished jobs kept this long: enough to see what ran overnight and why.
JOBS_KEPT_SECONDS = 7 * 24 * 3600


async def prune_jobs_tick(services: Services) -> None:
    pruned = await services.store.jobs.prune(time.time() - JOBS_KEPT_SECONDS)
    if pruned:
        log.info("deleted %d finished job(s) older than a week", pruned)


def start_scheduler(services: Services, settings: Settings) -> AsyncIOScheduler:
    """The training schedule: trains here (role all) or enqueues jobs (role trainer)."""
    scheduler = AsyncIOScheduler()
    enqueue = settings.role == "trainer"
    scheduler.add_job(
        enqueue_heads_tick if enqueue else retrain_tick,
        "interval",
        minutes=settings.retrain_check_minutes,
        args=(services, settings.retrain_min_new_votes),
        id="retrain_heads",
        # A tick that overlaps a slow previous one is skipped, not queued.
        max_instances=1,
        coalesce=True,
    )
    scheduler.add_job(
        enqueue_crowd_tick if enqueue else crowd_tick,
        "interval",
        minutes=settings.crowd_check_minutes,
        args=(services,),
        id="crowd_model",
        max_instances=1,
        coalesce=True,
    )
    if settings.finetune_cron:
        scheduler.add_job(
            enqueue_finetune_tick if enqueue else finetune_tick,
            crontab_trigger(settings.finetune_cron),
            args=(services,),
            id="finetune_backbone",
            max_instances=1,
            coalesce=True,
        )
    if enqueue:
        scheduler.add_job(
            prune_jobs_tick, "interval", hours=1, args=(services,), id="prune_jobs", coalesce=True
        )
    scheduler.start()
    return scheduler
