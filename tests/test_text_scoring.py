"""Captions (and text read from images) mixed into what the heads see, when TEXT_WEIGHT > 0."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from bot.services import Services
from bot.settings import Settings
from domain import IncomingImage, Person, Scored, Vote
from learner.encoder import ClipImageEncoder
from learner.ocr import ocr_available
from learner.text import ClipTextEncoder, combine
from tests.conftest import image_bytes

ALICE = Person("telegram", "1", "Alice")


async def send(service: Services, seed: int, caption: str | None, data: bytes | None = None):
    async def download() -> bytes:
        return data if data is not None else image_bytes(seed)

    out = await service.scoring.score_image(
        IncomingImage(ALICE, "1", str(seed), caption, None), download
    )
    assert isinstance(out, Scored)
    return out


@pytest.fixture
async def texty(
    settings: Settings, encoder: ClipImageEncoder, clip_dir: Path
) -> AsyncIterator[Services]:
    text = ClipTextEncoder.from_pretrained(str(clip_dir), model=encoder.model)
    assert text is not None
    service = await Services.open(
        settings.model_copy(update={"text_weight": 0.5, "ocr": False}), encoder, text
    )
    yield service
    await service.close()


async def test_text_off_by_default_stores_no_text(
    service: Services, encoder: ClipImageEncoder, clip_dir: Path
) -> None:
    assert service.settings.text_weight == 0 and service.text.text_encoder is None
    await send(service, 1, "a sunny beach")
    rows = await service.store.db.fetch_all("SELECT COUNT(*) FROM submission_texts")
    assert rows[0][0] == 0


async def test_captions_are_embedded_and_mixed_into_training_and_scoring(
    texty: Services,
) -> None:
    assert texty.text.text_encoder is not None
    for seed in range(1, 13):
        caption = "a cat" if seed % 2 == 0 else ("" if seed % 3 else "a dog")
        out = await send(texty, seed, caption or None)
        await texty.votes.record_vote(
            ALICE, out.submission_id, Vote.LIKE if seed % 2 == 0 else Vote.DISLIKE
        )
    rows = await texty.store.db.fetch_all(
        "SELECT s.message_id, t.text FROM submission_texts t JOIN submissions s ON s.id = t.submission_id"
    )
    assert {int(r[0]): r[1] for r in rows} == {
        s: ("a cat" if s % 2 == 0 else "a dog") for s in range(1, 13) if s % 2 == 0 or s % 3 == 0
    }
    labelled = await texty.store.votes.labelled_embeddings(1, texty.encoder.embedder.version)
    mixed = await texty.text.training_vectors(labelled)
    images = np.stack([np.frombuffer(v.vector, np.float32) for v in labelled])
    # Rows with text moved; rows without stay the (unit) image embedding.
    moved = ~np.isclose((mixed * images).sum(axis=1), 1.0, atol=1e-5)
    has_text = np.array([int(v.submission_id) in {int(r[0]) for r in rows} for v in labelled])
    assert (moved == has_text).all() and has_text.any() and not has_text.all()
    assert np.allclose(np.linalg.norm(mixed, axis=1), 1.0, atol=1e-5)

    [outcome] = await texty.retraining.retrain_due_heads(min_new_votes=1, trigger="test")
    assert outcome.promoted
    # The same picture scores differently with different captions: the head sees the text.
    with_cat = await send(texty, 100, "a cat", data=image_bytes(50))
    with_dog = await send(texty, 101, "a dog", data=image_bytes(50))
    plain = await send(texty, 102, None, data=image_bytes(50))
    assert with_cat.model_version == 1
    assert len({round(with_cat.score, 6), round(with_dog.score, 6), round(plain.score, 6)}) == 3


async def test_unvoted_images_are_mixed_with_their_text_as_voted_ones_are(
    texty: Services,
) -> None:
    """The graph a head spreads votes over must be in the space the votes and the scored
    images are in; unvoted images used to enter it image-only."""
    await send(texty, 1, "a cat")
    await send(texty, 2, None)
    rows = await texty.store.submissions.unlabelled_vectors(1, texty.encoder.embedder.version)
    assert len(rows) == 2
    images = np.stack([np.frombuffer(v, np.float32) for _, v in rows])
    mixed = await texty.text.unvoted_vectors(1, texty.encoder.embedder.version)
    assert mixed is not None and mixed.shape == images.shape
    cosines = (mixed * images).sum(axis=1)
    assert cosines[0] < 1.0 - 1e-4 and np.isclose(cosines[1], 1.0, atol=1e-5), cosines


def test_combine_keeps_image_when_text_is_missing() -> None:
    image = np.array([1.0, 0.0], np.float32)
    text = np.array([0.0, 1.0], np.float32)
    assert combine(image, None, 0.5) is image
    assert np.allclose(combine(image, text, 1.0), [2**-0.5, 2**-0.5])


@pytest.mark.skipif(not ocr_available(), reason="Tesseract is not installed")
async def test_text_in_the_image_is_read_after_the_reply(
    settings: Settings, encoder: ClipImageEncoder, clip_dir: Path
) -> None:
    text = ClipTextEncoder.from_pretrained(str(clip_dir), model=encoder.model)
    service = await Services.open(
        settings.model_copy(update={"text_weight": 0.5, "ocr": True}), encoder, text
    )
    try:
        picture = Image.new("RGB", (1280, 720), "white")
        ImageDraw.Draw(picture).text(
            (80, 280), "SUNSET BEACH", fill="black", font=ImageFont.load_default(size=120)
        )
        out = io.BytesIO()
        picture.save(out, "PNG")
        scored = await send(service, 1, "holiday", data=out.getvalue())
        for _ in range(200):  # OCR runs in the background, after the reply
            rows = await service.store.db.fetch_all("SELECT text FROM submission_texts")
            if rows and "SUNSET" in rows[0][0]:
                break
            await asyncio.sleep(0.05)
        assert rows[0][0].startswith("holiday\n") and "SUNSET BEACH" in rows[0][0]
        assert scored.submission_id == 1
    finally:
        await service.close()
