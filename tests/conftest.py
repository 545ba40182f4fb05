"""Shared fixtures: a tiny random CLIP on disk, settings in a temp DATA_DIR, the core service."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from bot.settings import Settings
from learner.encoder import ClipImageEncoder
from tests.tiny_clip import build_tiny_clip

if TYPE_CHECKING:
    from bot.core import TasteService


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def encoder(clip_dir: Path) -> ClipImageEncoder:
    # Loaded through from_pretrained(path), exactly as users load openai/clip-vit-base-patch32.
    return ClipImageEncoder(str(clip_dir), device="cpu")


@pytest.fixture
def settings(tmp_path: Path, clip_dir: Path) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        telegram_bot_token="123456:TEST-TOKEN",
        clip_model=str(clip_dir),
        data_dir=tmp_path / "data",
        admin_ids=frozenset({1000}),
        head_min_votes=6,
        retrain_min_new_votes=3,
        # The tiny random CLIP puts all pictures close together (cosine ~0.99);
        # only re-encodings of one picture are this close.
        duplicate_threshold=0.9995,
    )


@pytest.fixture
async def service(settings: Settings, encoder: ClipImageEncoder) -> AsyncIterator[TasteService]:
    # Imported here: the learner's tests run without the bot (which is wired to it separately).
    from bot.core import TasteService

    svc = await TasteService.open(settings, encoder)
    yield svc
    await svc.close()


def image_bytes(seed: int, *, size: tuple[int, int] = (96, 64), fmt: str = "JPEG") -> bytes:
    """A distinct, deterministic picture per seed: smooth colour blobs, not noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    pixels = np.zeros((h, w, 3))
    for channel in range(3):
        cx, cy, freq = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.02, 0.2)
        pixels[..., channel] = 127 + 120 * np.sin(freq * np.hypot(xx - cx, yy - cy))
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, fmt)
    return out.getvalue()
