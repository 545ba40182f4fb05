"""Shared fixtures: a tiny random CLIP on disk, settings in a temp DATA_DIR, the core service,
and the database on either backend (PostgreSQL: one throw-away cluster per session, a fresh
schema per test; skipped where PostgreSQL is not installed)."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.services import Services
from bot.settings import Settings
from learner.encoder import ClipImageEncoder
from storage.urls import sqlite_url
from testing.postgres import TempPostgres, available
from testing.tiny_clip import build_tiny_clip


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def encoder(clip_dir: Path) -> ClipImageEncoder:
    # Loaded through from_pretrained(path), exactly as users load openai/clip-vit-base-patch32.
    return ClipImageEncoder(str(clip_dir), device="cpu")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[TempPostgres]:
    ok, reason = available()
    if not ok:
        pytest.skip(reason)
    with TempPostgres() as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres_cluster: TempPostgres) -> Iterator[str]:
    """An empty database (a schema of its own) for this test."""
    with postgres_cluster.fresh_schema() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A DATABASE_URL on each backend in turn: for tests of storage itself."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "t.sqlite3")
    return str(request.getfixturevalue("postgres_url"))


# On a test that uses `settings` (or `service`, or a bot built on them): run it on both.
on_both_backends = pytest.mark.parametrize("backend", ["sqlite", "postgres"])


@pytest.fixture
def backend() -> str:
    """The database under `settings`: SQLite, unless a test parametrizes "backend" or
    TASTEBOT_TEST_BACKEND=postgres runs every such test on PostgreSQL."""
    return os.environ.get("TASTEBOT_TEST_BACKEND", "sqlite")


@pytest.fixture
def settings(
    tmp_path: Path, clip_dir: Path, backend: str, request: pytest.FixtureRequest
) -> Settings:
    database = "" if backend == "sqlite" else str(request.getfixturevalue("postgres_url"))
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        telegram_bot_token="123456:TEST-TOKEN",
        clip_model=str(clip_dir),
        data_dir=tmp_path / "data",
        database_url=database,
        admin_ids=frozenset({1000}),
        head_min_votes=6,
        retrain_min_new_votes=3,
        # The tiny random CLIP puts all pictures close together (cosine ~0.99);
        # only re-encodings of one picture are this close.
        duplicate_threshold=0.9995,
        # Tests that count models retrain by hand; tests of the retrain after votes turn it on.
        retrain_after_votes=False,
    )


@pytest.fixture
async def service(settings: Settings, encoder: ClipImageEncoder) -> AsyncIterator[Services]:
    svc = await Services.open(settings, encoder)
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
