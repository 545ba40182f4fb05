"""EmbeddingBatcher: concurrent images share forward passes; errors and shutdown are clean."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from bot import timing
from bot.embedding_batcher import BatcherClosed, EmbeddingBatcher


def picture(value: int) -> Image.Image:
    return Image.new("RGB", (4, 4), (value, 0, 0))


class RecordingEmbedder:
    """Embeds a picture as a unit vector keyed by its red value; remembers every batch."""

    def __init__(self, *, delay: float = 0.0, poison: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.delay = delay
        self.poison = poison
        self.release = threading.Event()
        self.release.set()

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        values = [int(im.getpixel((0, 0))[0]) for im in images]  # type: ignore[index]
        self.batches.append(values)
        self.threads.add(threading.current_thread().name)
        self.release.wait(5)
        time.sleep(self.delay)
        if self.poison in values:
            raise ValueError(f"cannot embed {self.poison}")
        out = np.zeros((len(values), 8), np.float32)
        out[np.arange(len(values)), np.array(values) % 8] = 1
        out[:, 7] = values  # the value itself, to check each caller gets its own row
        return out


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(1, thread_name_prefix="clip")
    yield executor
    executor.shutdown(wait=True)


async def test_concurrent_images_share_one_batch(pool: ThreadPoolExecutor) -> None:
    embedder = RecordingEmbedder()
    batcher = EmbeddingBatcher(embedder, pool, max_batch=32, max_wait_ms=50)
    vectors = await asyncio.gather(*(batcher.embed(picture(v)) for v in range(10)))
    assert embedder.batches == [list(range(10))]
    assert [int(v[7]) for v in vectors] == list(range(10))  # each caller gets its own vector
    assert embedder.threads == {"clip_0"}  # on the encoder's thread, never the event loop's
    await batcher.close()


async def test_batches_are_bounded_and_keep_order(pool: ThreadPoolExecutor) -> None:
    embedder = RecordingEmbedder()
    batcher = EmbeddingBatcher(embedder, pool, max_batch=4, max_wait_ms=50)
    vectors = await asyncio.gather(*(batcher.embed(picture(v)) for v in range(10)))
    assert embedder.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [int(v[7]) for v in vectors] == list(range(10))
    await batcher.close()


async def test_images_arriving_during_a_forward_pass_form_the_next_batch(
    pool: ThreadPoolExecutor,
) -> None:
    embedder = RecordingEmbedder()
    embedder.release.clear()  # the first forward pass blocks until released
    batcher = EmbeddingBatcher(embedder, pool, max_batch=32, max_wait_ms=0)
    first = asyncio.ensure_future(batcher.embed(picture(0)))
    while not embedder.batches:
        await asyncio.sleep(0.001)
    later = [asyncio.ensure_future(batcher.embed(picture(v))) for v in range(1, 6)]
    await asyncio.sleep(0.01)
    embedder.release.set()
    await asyncio.gather(first, *later)
    assert embedder.batches == [[0], [1, 2, 3, 4, 5]]
    await batcher.close()


async def test_a_lone_image_waits_only_the_bounded_wait(pool: ThreadPoolExecutor) -> None:
    embedder = RecordingEmbedder()
    batcher = EmbeddingBatcher(embedder, pool, max_batch=32, max_wait_ms=20)
    with timing.timed("test") as times:
        await asyncio.wait_for(batcher.embed(picture(1)), timeout=5)
    assert embedder.batches == [[1]]
    assert times.notes["batch"] == 1 and {"queue", "forward"} <= set(times.seconds)
    await batcher.close()


async def test_an_error_reaches_every_caller_it_hits(pool: ThreadPoolExecutor) -> None:
    embedder = RecordingEmbedder(poison=3)
    batcher = EmbeddingBatcher(embedder, pool, max_batch=32, max_wait_ms=50)
    results = await asyncio.gather(
        *(batcher.embed(picture(v)) for v in range(6)), return_exceptions=True
    )
    assert isinstance(results[3], ValueError)
    # The batch failed, so each image was retried alone: only the poisoned one fails.
    assert all(isinstance(r, np.ndarray) for i, r in enumerate(results) if i != 3)
    assert embedder.batches[0] == list(range(6)) and len(embedder.batches) == 7
    # A failure that hits everything reaches everyone.
    broken = EmbeddingBatcher(RecordingEmbedder(poison=0), pool, max_batch=1, max_wait_ms=0)
    with pytest.raises(ValueError):
        await broken.embed(picture(0))
    await batcher.close()
    await broken.close()


async def test_close_finishes_queued_images_then_refuses(pool: ThreadPoolExecutor) -> None:
    embedder = RecordingEmbedder(delay=0.01)
    batcher = EmbeddingBatcher(embedder, pool, max_batch=2, max_wait_ms=1000)
    pending = [asyncio.ensure_future(batcher.embed(picture(v))) for v in range(5)]
    await asyncio.sleep(0)
    await batcher.close()  # does not wait out the 1 s collection window
    assert all(p.done() and not p.exception() for p in pending)
    assert sorted(v for batch in embedder.batches for v in batch) == list(range(5))
    with pytest.raises(BatcherClosed):
        await batcher.embed(picture(9))
    await batcher.close()  # twice is fine


async def test_a_caller_that_gives_up_does_not_break_the_batch(pool: ThreadPoolExecutor) -> None:
    embedder = RecordingEmbedder()
    batcher = EmbeddingBatcher(embedder, pool, max_batch=32, max_wait_ms=30)
    gone = asyncio.ensure_future(batcher.embed(picture(1)))
    kept = asyncio.ensure_future(batcher.embed(picture(2)))
    await asyncio.sleep(0)
    gone.cancel()
    assert int((await kept)[7]) == 2
    assert embedder.batches == [[2]]
    await batcher.close()


def test_settings_are_checked(pool: ThreadPoolExecutor) -> None:
    with pytest.raises(ValueError):
        EmbeddingBatcher(RecordingEmbedder(), pool, max_batch=0)
    with pytest.raises(ValueError):
        EmbeddingBatcher(RecordingEmbedder(), pool, max_wait_ms=-1)
