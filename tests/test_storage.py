"""The schema and every store on both backends (SQLite files in a temp dir, PostgreSQL
databases in a throw-away cluster), and the FAISS cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import storage.migrations
from storage.connect import open_database
from storage.db import Transaction
from storage.migrations import MIGRATIONS
from storage.store import Store
from storage.vectors import VoteIndex

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def test_a_fresh_database_is_migrated_once(database_url: str) -> None:
    db = await open_database(database_url)
    try:
        assert await db.schema_version() == len(MIGRATIONS)
        assert {r[0] for r in await db.fetch_all("SELECT platform FROM users")} == set()
    finally:
        await db.close()
    # Reopening applies nothing twice (a second CREATE TABLE would fail).
    db = await open_database(database_url)
    assert await db.schema_version() == len(MIGRATIONS)
    await db.close()


@sqlite_only
async def test_sqlite_runs_with_its_pragmas(database_url: str) -> None:
    db = await open_database(database_url)
    try:
        assert (await db.fetch_one("PRAGMA journal_mode"))[0] == "wal"  # type: ignore[index]
        assert (await db.fetch_one("PRAGMA foreign_keys"))[0] == 1  # type: ignore[index]
        assert (await db.fetch_one("PRAGMA busy_timeout"))[0] == 5000  # type: ignore[index]
        assert (await db.fetch_one("PRAGMA synchronous"))[0] == 1  # type: ignore[index]
    finally:
        await db.close()


async def test_newer_schema_is_refused(database_url: str) -> None:
    db = await open_database(database_url)
    newer = len(MIGRATIONS) + 1
    if db.backend == "sqlite":
        await db.execute(f"PRAGMA user_version = {newer}")
    else:
        await db.execute("UPDATE schema_version SET version = ?", (newer,))
    await db.close()
    with pytest.raises(RuntimeError, match="newer than this code"):
        await open_database(database_url)


async def test_failed_transaction_leaves_nothing(database_url: str) -> None:
    store = await Store.connect(database_url)
    with pytest.raises(ZeroDivisionError):
        async with store.db.transaction() as conn:
            await conn.execute("INSERT INTO users (platform, platform_user_id) VALUES ('t', '1')")
            1 / 0  # noqa: B018
    assert (await store.people.totals()).users == 0
    await store.db.close()


async def test_a_write_cancelled_while_it_waits_to_begin_leaves_no_transaction_open(
    database_url: str,
) -> None:
    import asyncio

    store = await Store.connect(database_url)
    try:
        task = asyncio.create_task(store.people.get_or_create_user("t", "cancelled"))
        await asyncio.sleep(0)  # now awaiting BEGIN IMMEDIATE on aiosqlite's thread
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.people.get_or_create_user(
            "t", "next"
        )  # raised "transaction within a transaction"
        assert (await store.people.totals()).users in (1, 2)
    finally:
        await store.db.close()


async def _vote_fixture(store: Store) -> tuple[int, int]:
    user = await store.people.get_or_create_user("telegram", "1")
    vector = np.ones(4, np.float32) / 2
    submission = await store.submissions.record_submission(
        user_id=user.id,
        chat_id="1",
        message_id="10",
        caption=None,
        sha256="ab" * 32,
        byte_size=10,
        width=2,
        height=2,
        image_format="PNG",
        file_path=None,
        encoder_version="enc",
        vector=vector.tobytes(),
        dim=4,
        score=0.5,
        model_version_id=None,
    )
    return user.id, submission.id


async def test_votes_survive_a_crash(database_url: str) -> None:
    """Committed votes are stored even when the process never closes the connection."""
    store = await Store.connect(database_url)
    user_id, submission_id = await _vote_fixture(store)
    from domain import Vote

    await store.votes.upsert_vote(user_id, submission_id, Vote.LIKE)
    # No close(): a fresh connection, as after kill -9, sees the committed vote.
    other = await Store.connect(database_url)
    counts = await other.people.user_counts(user_id)
    assert (counts.images, counts.likes) == (1, 1)
    await other.db.close()
    await store.db.close()


async def test_foreign_keys_are_enforced(database_url: str) -> None:
    import sqlite3

    import psycopg

    store = await Store.connect(database_url)
    with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError), match=r"(?i)foreign key"):
        await store.db.execute(
            "INSERT INTO feedback (user_id, submission_id, vote, revision) VALUES (99, 99, 'like', 1)"
        )
    await store.db.close()


def _vectors(n: int, dim: int = 8, seed: int = 0) -> dict[int, bytes]:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return {100 + i: v[i].tobytes() for i in range(n)}


def test_liked_index_search_and_exclude(tmp_path: Path) -> None:
    liked = _vectors(20)
    index = VoteIndex(tmp_path, dim=8)
    assert index.sync(1, liked) is True
    query = np.frombuffer(liked[105], np.float32)
    found = index.search(1, query, k=3)
    assert found[0].image_id == 105 and found[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert [n.similarity for n in found] == sorted((n.similarity for n in found), reverse=True)
    assert 105 not in [n.image_id for n in index.search(1, query, k=3, exclude_image_id=105)]
    assert index.search(2, query, k=3) == []  # another person sees nothing of person 1


def test_liked_index_is_rebuilt_only_when_stale(tmp_path: Path) -> None:
    liked = _vectors(10)
    index = VoteIndex(tmp_path, dim=8)
    index.sync(1, liked)
    assert index.flush() == 1
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, no leftovers

    fresh = VoteIndex(tmp_path, dim=8)
    assert fresh.sync(1, liked) is False  # file matches SQLite: loaded, not rebuilt
    assert fresh.count(1) == 10

    stale = dict(liked)
    stale.pop(100)
    stale[999] = _vectors(1, seed=9)[100]  # one unliked, one newly liked
    again = VoteIndex(tmp_path, dim=8)
    assert again.sync(1, stale) is True
    assert again.count(1) == 10
    assert {
        n.image_id for n in again.search(1, np.frombuffer(stale[999], np.float32), k=10)
    } == set(stale)

    (tmp_path / "liked-1.faiss").write_bytes(b"garbage")
    assert VoteIndex(tmp_path, dim=8).sync(1, liked) is True  # unreadable file: rebuilt


def test_liked_index_add_remove_no_duplicates(tmp_path: Path) -> None:
    liked = _vectors(3)
    index = VoteIndex(tmp_path, dim=8)
    vector = np.frombuffer(liked[100], np.float32)
    index.add(1, 100, vector)
    index.add(1, 100, vector)  # FAISS itself would keep both
    assert index.count(1) == 1
    index.remove(1, 100)
    assert index.count(1) == 0 and index.search(1, vector, k=1) == []


async def test_a_vote_after_the_newest_was_undone_counts_as_new(database_url: str) -> None:
    from domain import NewModel, Vote

    store = await Store.connect(database_url)
    try:
        user_id, first = await _vote_fixture(store)
        later = []
        for n in (1, 2):
            sub = await store.submissions.record_submission(
                user_id=user_id, chat_id="1", message_id=f"1{n}", caption=None,
                sha256=f"{n:02d}" * 32, byte_size=10, width=2, height=2, image_format="PNG",
                file_path=None, encoder_version="enc", vector=np.ones(4, np.float32).tobytes(),
                dim=4, score=0.5, model_version_id=None,
            )  # fmt: skip
            later.append(sub.id)
        await store.votes.upsert_vote(user_id, first, Vote.LIKE)
        await store.votes.upsert_vote(user_id, later[0], Vote.DISLIKE)
        through = await store.votes.latest_revision(user_id)
        model = NewModel(user_id, "head", 1, "h.npz", "enc", 2, 0, {}, through)
        await store.models.add_model_version(model, promote=True)
        assert await store.votes.users_with_new_votes(1) == []
        assert await store.votes.new_votes(user_id) == 0
        await store.votes.delete_vote(user_id, later[0])  # /undo of the newest vote
        await store.votes.upsert_vote(user_id, later[1], Vote.LIKE)  # a new vote, after training
        assert await store.votes.users_with_new_votes(1) == [(user_id, 1)]
        assert await store.votes.new_votes(user_id) == 1  # counted alike: a round re-checks with it
        assert await store.votes.votes_after(through) == 1
    finally:
        await store.db.close()


async def test_the_revision_counter_starts_past_every_revision_of_an_older_database(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from domain import Vote

    # a database from before 3
    monkeypatch.setattr(storage.migrations, "MIGRATIONS", MIGRATIONS[:2])
    store = await Store.connect(database_url)
    try:
        # The rows as the code of that time wrote them (today's code needs later columns).
        await store.db.execute("INSERT INTO users (platform, platform_user_id) VALUES ('t', '1')")
        await store.db.execute(
            "INSERT INTO images (sha256, byte_size, width, height, format)"
            " VALUES ('ab', 10, 2, 2, 'PNG')"
        )
        await store.db.execute(
            "INSERT INTO submissions (user_id, image_id, chat_id, message_id, score)"
            " VALUES (1, 1, '1', '10', 0.5)"
        )
        user_id, submission_id = 1, 1
        await store.db.execute(  # numbered as the old code did, with revisions up to 41 used
            "INSERT INTO feedback (user_id, submission_id, vote, revision) VALUES (?, ?, 'like', 41)",
            (user_id, submission_id),
        )
    finally:
        await store.db.close()
    monkeypatch.setattr(storage.migrations, "MIGRATIONS", MIGRATIONS)
    store = await Store.connect(database_url)  # migration 3 runs here
    try:
        await store.votes.upsert_vote(user_id, submission_id, Vote.DISLIKE)
        assert await store.votes.latest_revision(user_id) == 42
    finally:
        await store.db.close()


async def test_people_are_found_by_id_or_username_and_unchanged_ones_cost_no_write(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from domain import Person

    store = await Store.connect(database_url)
    try:
        alice = await store.people.user_of(Person("telegram", "7", "Alice", "Alice_K"))
        assert await store.people.find_user("telegram", "@alice_k") == alice
        assert await store.people.find_user("telegram", "7") == alice
        assert await store.people.find_user("discord", "@alice_k") is None
        assert await store.people.find_user("telegram", "@bob") is None

        writes = 0
        real = store.db.transaction

        def counted():  # type: ignore[no-untyped-def]
            nonlocal writes
            writes += 1
            return real()

        monkeypatch.setattr(store.db, "transaction", counted)
        assert await store.people.user_of(Person("telegram", "7", "Alice", "Alice_K")) == alice
        assert writes == 0  # every image and tap looks the sender up: no write when unchanged
        await store.people.user_of(Person("telegram", "7", "Alice", "alice_new"))
        assert writes == 1
        assert await store.people.find_user("telegram", "@ALICE_NEW") == alice
    finally:
        await store.db.close()


@sqlite_only
async def test_only_durable_transactions_wait_for_the_disk(database_url: str) -> None:
    """Votes and deletions sync to disk at commit (synchronous=FULL); the rest commit in
    WAL with NORMAL, which a killed process cannot lose (only a power cut can)."""
    db = await open_database(database_url)

    async def synchronous(conn: Transaction) -> int:
        row = await conn.fetch_one("PRAGMA synchronous")
        assert row is not None
        return int(row[0])

    try:
        async with db.transaction(durable=True) as conn:
            assert await synchronous(conn) == 2  # FULL
        async with db.transaction() as conn:
            assert await synchronous(conn) == 1  # NORMAL, restored after the durable one
        with pytest.raises(RuntimeError):
            async with db.transaction(durable=True):
                raise RuntimeError("rolled back")
        async with db.transaction() as conn:
            assert await synchronous(conn) == 1
    finally:
        await db.close()


async def test_the_model_table_rebuild_keeps_every_row_and_reference(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 5 rebuilds model_versions (to allow 'crowd'): rows, ids and the submissions
    and runs that point at them survive; nothing cascades."""
    from domain import NewModel

    monkeypatch.setattr(storage.migrations, "MIGRATIONS", MIGRATIONS[:4])
    store = await Store.connect(database_url)
    try:
        user_id, submission_id = await _vote_fixture(store)
        head = NewModel(user_id, "head", 1, "models/heads/1/v1.npz", "enc", 5, 1, {"auc": 0.9}, 3)
        model = await store.models.add_model_version(head, promote=True)
        await store.db.execute(
            "UPDATE submissions SET model_version_id = ? WHERE id = ?", (model.id, submission_id)
        )
        run = await store.runs.start_training_run(user_id, "head", "test")
        await store.runs.finish_training_run(run, outcome="promoted", model_version_id=model.id)
    finally:
        await store.db.close()
    monkeypatch.setattr(storage.migrations, "MIGRATIONS", MIGRATIONS)
    store = await Store.connect(database_url)
    try:
        assert await store.db.schema_version() == len(MIGRATIONS)
        assert await store.models.active_model(user_id) == model
        rows = await store.db.fetch_all("SELECT model_version_id FROM submissions")
        assert [r[0] for r in rows] == [model.id]
        rows = await store.db.fetch_all("SELECT model_version_id FROM training_runs")
        assert [r[0] for r in rows] == [model.id]
        crowd = NewModel(None, "crowd", 1, "models/crowd/v1.npz", "enc", 50, 10, {}, 3)
        assert (await store.models.add_model_version(crowd, promote=True)).kind == "crowd"
        if store.db.backend == "sqlite":
            assert (await store.db.fetch_all("PRAGMA foreign_keys"))[0][0] == 1
    finally:
        await store.db.close()
