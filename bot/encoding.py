"""The CLIP encoder being served, and the threads it runs on.

Decoding and preprocessing run on a small pool; forward passes on one thread (torch
already uses every core inside one pass), shared by images from different people through
the micro-batcher. Switching to another encoder (a promoted fine-tune) waits for the images
being scored and holds new ones back, so no image is stored under one encoder's name with
the other's vector.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import numpy as np
from PIL import Image

from bot import timing
from bot.embedding_batcher import EmbeddingBatcher
from bot.settings import Settings
from learner.encoder import usable_cores
from learner.images import DecodedImage, decode_image

T = TypeVar("T")


class ImageEmbedder(Protocol):
    """What serving needs of the CLIP encoder (learner.encoder.ClipImageEncoder)."""

    version: str
    dim: int

    def prepare(self, image: Image.Image) -> Any:
        """Preprocess one image for embed() (any thread); embed() takes either."""

    def embed(self, images: Sequence[Any]) -> np.ndarray: ...


class TextEmbedder(Protocol):
    """What serving needs of CLIP's text tower (learner.text.ClipTextEncoder)."""

    version: str

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class ServedEncoder:
    def __init__(self, embedder: ImageEmbedder, settings: Settings) -> None:
        self.embedder = embedder
        self.settings = settings
        self._clip_thread = ThreadPoolExecutor(1, thread_name_prefix="clip")
        # More decode threads than spare cores would only take CPU from the forward pass and
        # the event loop during a burst (asyncio's default pool has 6).
        self._decode_pool = ThreadPoolExecutor(_decode_threads(), thread_name_prefix="decode")
        self._batcher = self._new_batcher(embedder)
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight = 0

    @property
    def version(self) -> str:
        return self.embedder.version

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def _new_batcher(self, embedder: ImageEmbedder) -> EmbeddingBatcher:
        return EmbeddingBatcher(
            embedder,
            self._clip_thread,
            max_batch=self.settings.embed_batch_max,
            max_wait_ms=self.settings.embed_batch_wait_ms,
        )

    @asynccontextmanager
    async def scoring(self) -> AsyncIterator[None]:
        """Held while one image is embedded and stored; an encoder switch waits for it."""
        await self._open.wait()
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def switch(
        self,
        embedder: ImageEmbedder,
        while_paused: Callable[[], Awaitable[None]],
    ) -> None:
        """Serve ``embedder`` from now on. ``while_paused`` runs once the images being scored
        are stored and while new ones wait: it brings what depends on the encoder in step."""
        self._open.clear()
        try:
            await self._idle.wait()
            await while_paused()
            old = self._batcher
            self.embedder = embedder
            self._batcher = self._new_batcher(embedder)
            await old.close()  # finishes what it had queued
        finally:
            self._open.set()

    async def decode_and_prepare(self, data: bytes) -> tuple[DecodedImage, Any]:
        """Decode and preprocess on a worker thread, so the CLIP thread only runs forwards."""

        def work() -> tuple[DecodedImage, Any, float, float]:
            started = time.perf_counter()
            decoded = decode_image(
                data,
                max_pixels=self.settings.max_image_pixels,
                max_bytes=self.settings.max_image_bytes,
            )
            decoded_at = time.perf_counter()
            prepared = self.embedder.prepare(decoded.image)
            return decoded, prepared, decoded_at - started, time.perf_counter() - decoded_at

        loop = asyncio.get_running_loop()
        decoded, prepared, decode_s, prepare_s = await loop.run_in_executor(self._decode_pool, work)
        timing.add("decode", decode_s)
        timing.add("preprocess", prepare_s)
        return decoded, prepared

    async def embed(self, prepared: Any) -> np.ndarray:
        """One image's vector, computed in a batch with whatever else is waiting."""
        return await self._batcher.embed(prepared)

    async def on_clip_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run other CLIP work (the text tower) on the forward-pass thread, one at a time."""
        return await asyncio.get_running_loop().run_in_executor(self._clip_thread, fn, *args)

    async def close(self) -> None:
        await self._batcher.close()
        self._clip_thread.shutdown(wait=True, cancel_futures=True)
        self._decode_pool.shutdown(wait=True, cancel_futures=True)


def _decode_threads() -> int:
    """Half the usable cores, at least one: the other half runs CLIP and the event loop."""
    return max(1, usable_cores() // 2)
