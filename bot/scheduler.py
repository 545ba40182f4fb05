"""The scheduled retrain: APScheduler 3 on the bot's event loop."""

from __future__ import annotations

import logging

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


def start_scheduler(services: Services, settings: Settings) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler()
    scheduler.add_job(
        retrain_tick,
        "interval",
        minutes=settings.retrain_check_minutes,
        args=(services, settings.retrain_min_new_votes),
        id="retrain_heads",
        # A tick that overlaps a slow previous one is skipped, not queued.
        max_instances=1,
        coalesce=True,
    )
    scheduler.add_job(
        crowd_tick,
        "interval",
        minutes=settings.crowd_check_minutes,
        args=(services,),
        id="crowd_model",
        max_instances=1,
        coalesce=True,
    )
    if settings.finetune_cron:
        scheduler.add_job(
            finetune_tick,
            crontab_trigger(settings.finetune_cron),
            args=(services,),
            id="finetune_backbone",
            max_instances=1,
            coalesce=True,
        )
    scheduler.start()
    return scheduler
