"""What following other processes costs a worker, for one person with many votes.

    python -m bench.index_refresh [--votes 10000] [--dim 512] [--repeat 200]

Builds a database (the real migrations, SQLite in a temp dir) where one person voted on
``--votes`` images (2 in 3 liked) with random unit vectors, then times, in one run:

1. the per-score checks a worker makes: the person's vote stamp (bot.vote_indexes refresh,
   nothing changed) and their active model row (bot.active_heads);
2. a cold rebuild of the person's liked and disliked indexes from the database (a worker
   that has never served them: ids, vectors, and an IVF above 4,096 vectors);
3. an incremental refresh after one vote stored by another process.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np

from bot.vote_indexes import VoteIndexes
from domain import Vote
from storage.store import Store

ENCODER = "bench"


def fill(path: Path, votes: int, dim: int) -> None:
    """One person, ``votes`` images with embeddings, submissions and votes: raw inserts."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((votes + 1, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    db = sqlite3.connect(path)
    db.execute("INSERT INTO users (id, platform, platform_user_id) VALUES (1, 'telegram', '1')")
    db.executemany(
        "INSERT INTO images (id, sha256, byte_size, width, height, format)"
        " VALUES (?, ?, 1, 1, 1, 'JPEG')",
        [(i, f"{i:064x}") for i in range(1, votes + 2)],
    )
    db.executemany(
        "INSERT INTO embeddings (image_id, encoder_version, dim, vector) VALUES (?, ?, ?, ?)",
        [(i, ENCODER, dim, vectors[i - 1].tobytes()) for i in range(1, votes + 2)],
    )
    db.executemany(
        "INSERT INTO submissions (id, user_id, image_id, chat_id, message_id, score)"
        " VALUES (?, 1, ?, '1', ?, 0.5)",
        [(i, i, str(i)) for i in range(1, votes + 2)],
    )
    db.executemany(
        "INSERT INTO feedback (user_id, submission_id, vote, revision) VALUES (1, ?, ?, ?)",
        [(i, "dislike" if i % 3 == 0 else "like", i) for i in range(1, votes + 1)],
    )
    db.execute("UPDATE revision_counter SET value = ?", (votes,))
    db.commit()
    db.close()


async def timed_ms(work, repeat: int = 1) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    for _ in range(repeat):
        await work()
    return (time.perf_counter() - started) * 1000 / repeat


async def main(votes: int, dim: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.sqlite3"
        await (await Store.open(path)).close()  # migrated
        fill(path, votes, dim)
        store = await Store.open(path)
        indexes = VoteIndexes(store, Path(tmp) / "faiss", ENCODER, dim)
        cold = await timed_ms(lambda: indexes.refresh(1))
        stamp = await timed_ms(lambda: indexes.refresh(1), repeat)
        model = await timed_ms(lambda: store.models.active_model(1), repeat)
        await store.votes.upsert_vote(1, votes + 1, Vote.LIKE)
        one_new = await timed_ms(lambda: indexes.refresh(1))
        liked = indexes.liked.count(1)
        await store.close()
    print(f"{platform.processor() or platform.machine()}, {votes} votes ({liked} liked), dim {dim}")
    print(f"  per score, nothing changed: vote stamp {stamp:.3f} ms, active model {model:.3f} ms")
    print(f"  cold rebuild from the database: {cold:.0f} ms")
    print(f"  refresh after one vote from another process: {one_new:.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--votes", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.votes, args.dim, args.repeat))
