"""Load the CLIP image encoder the settings ask for: at start, and on a worker when a
trainer promoted a fine-tuned one."""

from __future__ import annotations

import asyncio
import logging

from bot.settings import Settings
from learner.encoder import ClipImageEncoder

log = logging.getLogger(__name__)


async def load_encoder(settings: Settings, model: str) -> ClipImageEncoder:
    """``model``: a hub id or a directory (CLIP_MODEL, or a promoted fine-tune's). Loaded off
    the event loop: seconds for ViT-B/32, longer on a first conversion to the engine."""
    log.info("loading CLIP %s", model)
    encoder = await asyncio.to_thread(
        ClipImageEncoder,
        model,
        device=None if settings.device == "auto" else settings.device,
        torch_threads=settings.torch_threads,  # 0 = every usable core but one
        precision=settings.clip_precision,
        text_tower=settings.text_weight > 0,  # off: its memory is freed
        engine=settings.clip_engine,
        engine_cache=settings.data_dir / "engines",  # converted once per encoder version
        revision=settings.clip_revision,
    )
    log.info("CLIP engine %s (%s), %s", encoder.engine, encoder.engine_reason, encoder.precision)
    return encoder
