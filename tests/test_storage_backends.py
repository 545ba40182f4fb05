"""What must hold alike on SQLite and PostgreSQL: the interface stores use, the schema,
values that round-trip, and two workers writing at once."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path

import numpy as np
import psycopg
import pytest

from domain import NewModel, Vote
from storage.connect import open_database
from storage.db import Database
from storage.migrations import MIGRATIONS
from storage.store import Store
from storage.urls import parse_database_url, sqlite_url

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")  # SQLite's strftime('%f')


async def _submission(store: Store, user_id: int, n: int, vector: bytes) -> int:
    sub = await store.submissions.record_submission(
        user_id=user_id, chat_id="1", message_id=str(n), caption=None,
        sha256=f"{n:064d}", byte_size=10, width=2, height=2, image_format="PNG",
        file_path=f"images/{n}.png", encoder_version="enc", vector=vector, dim=4,
        score=0.25, model_version_id=None,
    )  # fmt: skip
    return sub.id


async def test_the_transaction_interface(database_url: str) -> None:
    db = await open_database(database_url)
    try:
        async with db.transaction() as tx:
            many = await tx.executemany(
                "INSERT INTO users (platform, platform_user_id) VALUES (?, ?)",
                [("t", "1"), ("t", "2"), ("t", "3")],
            )
            changed = await tx.execute("UPDATE users SET display_name = ? WHERE id > ?", ("x", 1))
            first = await tx.fetch_one("SELECT id, platform_user_id FROM users ORDER BY id")
            missing = await tx.fetch_one("SELECT id FROM users WHERE platform = ?", ("none",))
        assert (many.rowcount, changed.rowcount, missing) == (3, 2, None)
        assert first is not None and first[1] == first["platform_user_id"] == "1"
        assert dict(first) == {"id": first[0], "platform_user_id": "1"}
        # A literal % beside a ? placeholder (psycopg's own placeholder is %s).
        row = await db.fetch_one("SELECT '100%' || ? AS text", ("!",))
        assert row is not None and row["text"] == "100%!"
        assert [tuple(r) for r in await db.fetch_all("SELECT COUNT(*) FROM users")] == [(3,)]
        assert (await db.execute("DELETE FROM users WHERE id > ?", (0,))).rowcount == 3
    finally:
        await db.close()


async def test_vectors_scores_and_times_read_back_alike(database_url: str) -> None:
    store = await Store.connect(database_url)
    try:
        user = await store.people.get_or_create_user("telegram", "1")
        vector = np.array([0.1, -0.5, 1e-8, 3.0], np.float32).tobytes()
        submission_id = await _submission(store, user.id, 1, vector)
        assert await store.images.find_embedding(f"{1:064d}", "enc") == (1, vector)
        await store.votes.upsert_vote(user.id, submission_id, Vote.LIKE)
        [labelled] = await store.votes.labelled_embeddings(user.id, "enc")
        assert type(labelled.vector) is bytes and labelled.vector == vector
        [row] = await store.people.export_rows(user.id)
        assert row["score"] == 0.25 and row["vote"] == "like"
        assert ISO_MS.match(str(row["submitted_at"])) and ISO_MS.match(str(row["voted_at"]))
        run = await store.runs.start_training_run(user.id, "head", "test")
        await store.runs.finish_training_run(run, outcome="failed", detail="x")
        times = await store.db.fetch_one("SELECT started_at, finished_at FROM training_runs")
        assert times is not None and all(ISO_MS.match(t) for t in times)
    finally:
        await store.db.close()


async def test_one_active_model_per_owner_and_kind_even_without_an_owner(
    database_url: str,
) -> None:
    """The partial unique index over COALESCE(owner, -1): global models are one owner."""
    store = await Store.connect(database_url)
    try:
        crowd = NewModel(None, "crowd", 1, "c1.npz", "enc", 50, 10, {}, 3)
        await store.models.add_model_version(crowd, promote=True)
        with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):
            await store.db.execute(
                "INSERT INTO model_versions (owner_user_id, kind, version, file_path,"
                " encoder_version, train_size, holdout_size, metrics_json, trained_through,"
                " status) VALUES (NULL, 'crowd', 2, 'c2.npz', 'enc', 1, 1, '{}', 3, 'active')"
            )
        second = NewModel(None, "crowd", 2, "c2.npz", "enc", 60, 10, {}, 4)
        await store.models.add_model_version(second, promote=True)  # retires the first
        active = await store.models.active_global("crowd")
        assert active is not None and active.version == 2
        assert await store.models.next_model_version(None, "crowd") == 3
    finally:
        await store.db.close()


async def test_two_workers_voting_at_once_store_each_vote_once(database_url: str) -> None:
    """Two processes' databases on one store (SQLite: one file; PostgreSQL: one database),
    the same person's taps arriving at both, some of them twice (a redelivered update)."""
    first = await Store.connect(database_url)
    second = await Store.connect(database_url)
    try:
        user = await first.people.get_or_create_user("telegram", "1")
        vector = np.ones(4, np.float32).tobytes()
        ids = [await _submission(first, user.id, n, vector) for n in range(1, 13)]
        taps = [
            (worker, sid, Vote.LIKE if n % 2 else Vote.DISLIKE)
            for n, sid in enumerate(ids)
            for worker in ((first, second) if n % 3 == 0 else (first if n % 2 else second,))
        ]
        changes = await asyncio.gather(*(w.votes.upsert_vote(user.id, s, v) for w, s, v in taps))
        assert sum(1 for c in changes if c is not None and c.changed) == len(ids)
        rows = await second.db.fetch_all(
            "SELECT submission_id, vote, revision FROM feedback ORDER BY revision"
        )
        assert sorted(r[0] for r in rows) == ids  # each vote stored once
        revisions = [int(r[2]) for r in rows]
        assert len(set(revisions)) == len(ids) and revisions == list(range(1, len(ids) + 1))
        counter = await first.db.fetch_one("SELECT value FROM revision_counter")
        assert counter is not None and counter[0] == len(ids)  # no number lost to a retap
    finally:
        await first.db.close()
        await second.db.close()


SCHEMA_SQL = {
    "sqlite": {
        "tables": "SELECT name FROM sqlite_master WHERE type = 'table'",
        "indexes": "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL",
        "columns": "SELECT name FROM pragma_table_info(?)",
        "foreign_keys": 'SELECT "from", "table", on_delete FROM pragma_foreign_key_list(?)',
        # one row per column of each unique index (the primary key's too); NULL: an expression
        "uniques": "SELECT il.name, ii.name FROM pragma_index_list(?) il,"
        ' pragma_index_info(il.name) ii WHERE il."unique" ORDER BY il.name, ii.seqno',
        "primary_key": "SELECT name FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk",
    },
    "postgresql": {
        "tables": "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = current_schema() AND table_name != 'schema_version'",
        "indexes": "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
        " AND indexname NOT LIKE '%_pkey' AND indexname NOT LIKE '%_key'",
        "columns": "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = ?",
        "foreign_keys": "SELECT a.attname, f.relname, CASE c.confdeltype WHEN 'c' THEN 'CASCADE'"
        " WHEN 'n' THEN 'SET NULL' ELSE 'NO ACTION' END FROM pg_constraint c"
        " JOIN pg_class t ON t.oid = c.conrelid JOIN pg_class f ON f.oid = c.confrelid"
        " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]"
        " WHERE c.contype = 'f' AND t.relname = ? AND t.relnamespace = current_schema()::regnamespace",
        "uniques": "SELECT i.indexrelid::regclass::text, a.attname FROM pg_index i"
        " JOIN pg_class t ON t.oid = i.indrelid"
        " CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)"
        " LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum"
        " WHERE i.indisunique AND t.relname = ? AND t.relnamespace = current_schema()::regnamespace"
        " ORDER BY 1, k.ord",
    },
}


async def _schema(db: Database) -> tuple[dict[str, object], set[str]]:
    """table → (columns, foreign keys, unique column lists); and the named indexes."""
    sql = SCHEMA_SQL[db.backend]
    tables: dict[str, object] = {}
    for (table,) in await db.fetch_all(sql["tables"]):
        columns = {r[0] for r in await db.fetch_all(sql["columns"], (table,))}
        keys = {tuple(r) for r in await db.fetch_all(sql["foreign_keys"], (table,))}
        uniques: dict[str, tuple[str | None, ...]] = {}
        for index, column in await db.fetch_all(sql["uniques"], (table,)):
            uniques[index] = (*uniques.get(index, ()), column)
        if db.backend == "sqlite":  # an INTEGER PRIMARY KEY is the rowid: no index to list
            key = await db.fetch_all(sql["primary_key"], (table,))
            uniques["primary key"] = tuple(r[0] for r in key)
        tables[table] = (columns, keys, set(uniques.values()))
    return tables, {r[0] for r in await db.fetch_all(sql["indexes"])}


async def test_both_backends_end_with_the_same_schema(postgres_url: str, tmp_path: Path) -> None:
    """Tables, columns, foreign keys with their ON DELETE, unique keys and index names."""
    lite = await open_database(sqlite_url(tmp_path / "t.sqlite3"))
    pg = await open_database(postgres_url)
    try:
        lite_tables, lite_indexes = await _schema(lite)
        pg_tables, pg_indexes = await _schema(pg)
        columns, keys, uniques = lite_tables["feedback"]  # type: ignore[misc]
        assert "revision" in columns and ("submission_id", "submissions", "CASCADE") in keys
        assert ("user_id", "submission_id") in uniques
        assert pg_tables == lite_tables
        assert "one_active_model" in lite_indexes
        assert pg_indexes == lite_indexes
    finally:
        await lite.close()
        await pg.close()


async def test_workers_starting_together_migrate_once(postgres_url: str) -> None:
    """They queue on an advisory lock: the first migrates, the rest find it done."""
    opened = await asyncio.gather(*(open_database(postgres_url) for _ in range(4)))
    try:
        assert [await db.schema_version() for db in opened] == [len(MIGRATIONS)] * 4
    finally:
        for db in opened:
            await db.close()


@pytest.mark.parametrize(
    ("url", "backend"),
    [
        ("sqlite:///data/tastebot.sqlite3", "sqlite"),
        ("sqlite:////var/lib/tastebot/db.sqlite3", "sqlite"),
        ("postgresql://bot:secret@db:5432/tastebot", "postgresql"),
        ("postgres://bot@localhost/tastebot", "postgresql"),
    ],
)
def test_database_urls_name_their_backend(url: str, backend: str) -> None:
    assert parse_database_url(url).backend == backend


def test_the_default_is_the_sqlite_file_installs_already_have(tmp_path: Path) -> None:
    from bot.settings import Settings

    settings = Settings(_env_file=None, telegram_bot_token="1:x", data_dir=tmp_path)  # type: ignore[call-arg]
    assert parse_database_url(settings.database()).path == tmp_path / "tastebot.sqlite3"
    moved = settings.model_copy(update={"data_dir": tmp_path / "other"})
    assert parse_database_url(moved.database()).path == tmp_path / "other" / "tastebot.sqlite3"


@pytest.mark.parametrize(
    "url", ["mysql://bot:secret@db/tastebot", "sqlite://relative.db", "tastebot.sqlite3"]
)
def test_any_other_database_url_stops_the_start_in_one_line_without_its_password(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.__main__ import load_settings

    monkeypatch.chdir(tmp_path)  # no .env here: the environment alone
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "1:x")
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(SystemExit) as stopped:
        load_settings()
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("tastebot: DATABASE_URL: ") and err.count("\n") == 1
    assert "sqlite:///data/tastebot.sqlite3" in err and "secret" not in err


async def test_an_unreachable_postgres_fails_at_once_in_libpq_words() -> None:
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match="refused"):
        await open_database(f"postgresql://tastebot:secret@127.0.0.1:{port}/tastebot")
    assert time.monotonic() - started < 5  # not a pool's timeout


async def test_an_sqlite_install_copies_into_postgres_ids_and_all(
    postgres_url: str, tmp_path: Path
) -> None:
    from storage.transfer import copy_database

    lite = await Store.connect(sqlite_url(tmp_path / "t.sqlite3"))
    pg = await Store.connect(postgres_url)
    try:
        alice = await lite.people.get_or_create_user("telegram", "1", "Alice", "alice")
        bob = await lite.people.get_or_create_user("telegram", "2")
        dave = await lite.people.get_or_create_user("telegram", "4")
        await lite.people.forget_user(bob.id)  # ids with a gap, as a real install has
        vector = np.arange(4, dtype=np.float32).tobytes()
        ids = [await _submission(lite, alice.id, n, vector) for n in range(1, 4)]
        for sid in ids:
            await lite.votes.upsert_vote(alice.id, sid, Vote.LIKE)
        await lite.votes.delete_vote(alice.id, ids[-1])  # the counter stays past its number
        head = NewModel(alice.id, "head", 1, "h.npz", "enc", 2, 0, {"auc": 0.5}, 2)
        model = await lite.models.add_model_version(head, promote=True)

        copied = await copy_database(lite.db, pg.db)
        assert (copied["users"], copied["feedback"], copied["embeddings"]) == (2, 2, 3)
        assert await pg.people.find_user("telegram", "4") == dave
        assert await pg.models.active_model(alice.id) == model
        assert await pg.people.find_user("telegram", "@ALICE") == alice
        assert await pg.votes.labelled_embeddings(alice.id, "enc") == (
            await lite.votes.labelled_embeddings(alice.id, "enc")
        )
        carol = await pg.people.get_or_create_user("telegram", "3")  # a fresh id, no clash
        assert carol.id == dave.id + 1
        change = await pg.votes.upsert_vote(alice.id, ids[-1], Vote.DISLIKE)
        assert change is not None and await pg.votes.latest_revision(alice.id) == 4
        with pytest.raises(RuntimeError, match="not empty"):
            await copy_database(lite.db, pg.db)
    finally:
        await lite.db.close()
        await pg.db.close()
