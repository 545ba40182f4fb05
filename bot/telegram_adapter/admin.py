"""Admin commands: /retrain (heads, or a fine-tune of CLIP), /models, /rollback."""

from __future__ import annotations

import asyncio
import logging

from telegram import Message, Update
from telegram.error import BadRequest

from bot import admin_text
from bot.telegram_adapter.callback_data import (
    is_id,
)
from bot.telegram_adapter.context import (
    PLATFORM,
    TasteContext,
    require_admin,
)

log = logging.getLogger(__name__)


async def cmd_retrain(update: Update, context: TasteContext) -> None:
    """/retrain [all|<user id>] (admins): retrain now."""
    message = update.effective_message
    assert message is not None
    if not await require_admin(update, context, "/retrain"):
        return
    target = (context.args or ["all"])[0]
    if context.services.settings.role == "worker" and target != "cancel":
        queued = await context.services.queue.enqueue_on_request(PLATFORM, target)
        await message.reply_text(admin_text.queued_text(queued, target))
        return
    if target == "crowd":
        crowd = await context.services.crowd_training.retrain("admin")
        await message.reply_text(admin_text.crowd_text(crowd))
        return
    if target in ("full", "cancel"):
        await _retrain_backbone(message, context, cancel=target == "cancel")
        return
    if target == "all":
        # One message, edited as people are retrained, then replaced by the results.
        status = await message.reply_text("Retraining everyone with new votes…")
        last_edit = 0.0

        async def progress(done: int, total: int) -> None:
            nonlocal last_edit
            now = asyncio.get_running_loop().time()
            if done < total and now - last_edit >= 2.0:  # stay far below Telegram's edit limits
                last_edit = now
                await status.edit_text(f"Retraining… {done} of {total} people done.")

        outcomes = await context.services.retraining.retrain_due_heads(
            min_new_votes=1, trigger="admin", on_progress=progress
        )
        await status.edit_text(admin_text.retrain_text(outcomes))
        return
    outcome = await context.services.retraining.retrain_person(PLATFORM, target, trigger="admin")
    await message.reply_text(
        f"I don't know user {target}." if outcome is None else admin_text.retrain_text([outcome])
    )


async def _retrain_backbone(message: Message, context: TasteContext, *, cancel: bool) -> None:
    """/retrain full: fine-tune CLIP, with progress in one edited message; /retrain cancel."""
    tuner = context.services.backbone
    assert tuner is not None
    if cancel:
        await message.reply_text(
            "Cancelling the fine-tune…" if tuner.cancel() else "No fine-tune is running."
        )
        return
    if tuner.running:
        await message.reply_text("A fine-tune is already running; /retrain cancel stops it.")
        return
    status = await message.reply_text("Starting a fine-tune of CLIP…")
    shown = status.text

    async def progress(text: str) -> None:
        nonlocal shown
        if text != shown:
            shown = text
            try:
                await status.edit_text(text)
            except BadRequest as error:  # e.g. edited too often: the next update comes soon
                log.debug("progress edit failed: %s", error)

    outcome = await tuner.run("admin", on_progress=progress)
    await progress(admin_text.backbone_text(outcome))


async def cmd_models(update: Update, context: TasteContext) -> None:
    """/models <user id> (admins): every model version of a person, with metrics."""
    message = update.effective_message
    assert message is not None
    if not await require_admin(update, context, "/models"):
        return
    if len(context.args or []) != 1:
        await message.reply_text("Usage: /models <user id or @username>")
        return
    target = context.args[0]  # type: ignore[index]
    await message.reply_text(
        admin_text.models_text(target, await context.services.admin.models_of(PLATFORM, target))
    )


async def cmd_rollback(update: Update, context: TasteContext) -> None:
    """/rollback <user id> <version> (admins): make an earlier model the active one."""
    message = update.effective_message
    assert message is not None
    if not await require_admin(update, context, "/rollback"):
        return
    args = context.args or []
    # "3" or "v3", as /models lists them; ASCII digits only ("²" is a digit to isdigit).
    version_text = args[1].lower().removeprefix("v") if len(args) == 2 else ""
    if not is_id(version_text):
        await message.reply_text("Usage: /rollback <user id or @username> <version>")
        return
    version = int(version_text)
    outcome = await context.services.admin.rollback(PLATFORM, args[0], version)
    await message.reply_text(
        admin_text.rollback_text(args[0], version, outcome, context.settings.head_files_kept)
    )


async def stats_of_everyone(update: Update, context: TasteContext) -> None:
    """/stats all (admins): one line per person."""
    assert update.effective_message is not None
    if not await require_admin(update, context, "/stats all"):
        return
    summaries = await context.services.admin.summaries()
    await update.effective_message.reply_text(admin_text.summaries_text(summaries))
