"""Text beside the image: captions, and text read in screenshots (OCR), embedded with
CLIP's text tower and mixed into what a head sees (TEXT_WEIGHT > 0)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from bot.encoding import ServedEncoder, TextEmbedder
from domain import LabelledEmbedding
from learner.images import ImageRejected, decode_image
from learner.ocr import extract_text, ocr_available
from learner.text import combine
from storage.store import Store

OCR_DECODE_SIZE = 1 << 16  # full resolution: small print does not survive 1/8-scale decoding


class TextFeatures:
    def __init__(
        self,
        store: Store,
        encoder: ServedEncoder,
        text_encoder: TextEmbedder | None,
        *,
        text_weight: float,
        ocr: bool,
        max_pixels: int,
        max_bytes: int,
    ) -> None:
        self.store = store
        self.encoder = encoder
        # Text is used only with a tokenizer and TEXT_WEIGHT > 0.
        self.text_encoder = text_encoder if text_weight > 0 else None
        self.text_weight = text_weight
        self.ocr = ocr
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self._background: set[asyncio.Task[None]] = set()  # OCR after the reply

    @property
    def enabled(self) -> bool:
        return self.text_encoder is not None

    async def embed(self, text: str) -> np.ndarray:
        assert self.text_encoder is not None
        vectors = await self.encoder.on_clip_thread(self.text_encoder.embed, [text])
        return np.asarray(vectors[0], np.float32)

    async def caption_vector(self, caption: str | None) -> np.ndarray | None:
        return await self.embed(caption) if self.enabled and caption else None

    async def record(
        self,
        submission_id: int,
        caption: str | None,
        caption_vector: np.ndarray | None,
        data: bytes,
    ) -> None:
        """Store the caption's embedding now; read text in the image after the reply (OCR
        takes ~0.4 s a screenshot, several CLIP forwards) and store caption + text then."""
        if self.text_encoder is None:
            return
        if caption and caption_vector is not None:
            await self.store.submissions.put_submission_text(
                submission_id, self.text_encoder.version, caption, caption_vector.tobytes()
            )
        if self.ocr and ocr_available():
            task = asyncio.create_task(self._read_text_in_image(submission_id, caption, data))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _read_text_in_image(
        self, submission_id: int, caption: str | None, data: bytes
    ) -> None:
        assert self.text_encoder is not None
        loop = asyncio.get_running_loop()
        try:
            decoded = await loop.run_in_executor(
                None,
                lambda: decode_image(
                    data,
                    max_pixels=self.max_pixels,
                    max_bytes=self.max_bytes,
                    target_size=OCR_DECODE_SIZE,
                ),
            )
        except ImageRejected:
            return
        found = await loop.run_in_executor(None, extract_text, decoded.image)
        if not found:
            return
        text = f"{caption}\n{found}" if caption else found
        vector = await self.embed(text)
        await self.store.submissions.put_submission_text(
            submission_id, self.text_encoder.version, text, vector.tobytes()
        )

    async def text_vector_of(self, submission_id: int) -> np.ndarray | None:
        if self.text_encoder is None:
            return None
        texts = await self.store.submissions.submission_text_vectors(
            [submission_id], self.text_encoder.version
        )
        found = texts.get(submission_id)
        return None if found is None else np.frombuffer(found, np.float32)

    async def training_vectors(self, labelled: Sequence[LabelledEmbedding]) -> np.ndarray:
        """What a head trains on: each vote's image embedding, mixed with its text's when
        text is on (rows without text stay image-only)."""
        return await self.with_text([(v.submission_id, v.vector) for v in labelled])

    async def unvoted_vectors(self, user_id: int, encoder_version: str) -> np.ndarray | None:
        """What a head spreads the person's votes over (None if nothing): the images they
        sent without voting, each mixed with its text as a voted one is."""
        rows = await self.store.submissions.unlabelled_vectors(user_id, encoder_version)
        return await self.with_text(rows) if rows else None

    async def with_text(self, rows: Sequence[tuple[int, bytes]]) -> np.ndarray:
        """(submission id, image vector) rows -> the vectors a head sees."""
        images = np.stack([np.frombuffer(vector, np.float32) for _, vector in rows])
        if self.text_encoder is None:
            return images
        ids = [submission_id for submission_id, _ in rows]
        texts = await self.store.submissions.submission_text_vectors(ids, self.text_encoder.version)
        text = np.zeros_like(images)
        for row, submission_id in enumerate(ids):
            if submission_id in texts:
                text[row] = np.frombuffer(texts[submission_id], np.float32)
        return combine(images, text, self.text_weight)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()  # an unfinished OCR: the caption alone stays
        await asyncio.gather(*self._background, return_exceptions=True)
