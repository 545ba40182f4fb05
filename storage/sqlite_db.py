"""SQLite: one aiosqlite connection, its pragmas, migrations, and one-at-a-time access."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from storage import migrations
from storage.db import Database, ExecResult, Row

log = logging.getLogger(__name__)


class SqliteTransaction:
    """Statements inside one BEGIN IMMEDIATE … COMMIT on the shared connection."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._conn = connection

    # execute and fetch_all take one trip to aiosqlite's thread each; a cursor's close would
    # be another, and the cursor goes with its last reference anyway.
    async def execute(self, sql: str, params: Iterable[Any] = ()) -> ExecResult:
        cursor = await self._conn.execute(sql, tuple(params))
        return ExecResult(cursor.rowcount)

    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> ExecResult:
        cursor = await self._conn.executemany(sql, [tuple(row) for row in rows])
        return ExecResult(cursor.rowcount)

    async def fetch_one(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        async with self._conn.execute(sql, tuple(params)) as cursor:
            row: Row | None = await cursor.fetchone()
            return row

    async def fetch_all(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        return list(await self._conn.execute_fetchall(sql, tuple(params)))


class SqliteDatabase(Database):
    """One aiosqlite connection shared by the whole process.

    aiosqlite runs every statement on one background thread, but statements
    from different coroutines would still interleave inside each other's
    transactions; the lock makes each `transaction()` / `fetch*` call atomic.
    """

    backend = "sqlite"

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._conn = connection
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, *, busy_timeout_ms: int = 5000) -> SqliteDatabase:
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        conn = await aiosqlite.connect(path, isolation_level=None)
        conn.row_factory = aiosqlite.Row
        await conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL: in WAL mode every commit survives a killed process, and a power cut can only
        # lose the newest commits, never corrupt the file. What must survive a power cut too
        # (votes, deletions) commits with transaction(durable=True), which syncs to disk.
        await conn.execute("PRAGMA synchronous = NORMAL")
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        await conn.execute("PRAGMA foreign_keys = ON")
        db = cls(conn)
        try:
            await db._migrate()
        except BaseException:
            await conn.close()
            raise
        return db

    async def close(self) -> None:
        async with self._lock:
            await self._conn.close()

    async def schema_version(self) -> int:
        rows = await self.fetch_all("PRAGMA user_version")
        return int(rows[0][0])

    async def _migrate(self) -> None:
        current = await self.schema_version()
        known = migrations.MIGRATIONS
        if current > len(known):
            raise RuntimeError(
                f"database schema v{current} is newer than this code (v{len(known)})"
            )
        for number, migration in enumerate(known[current:], start=current + 1):
            log.info("applying migration %d", number)
            async with self._lock:
                await self._apply(number, migrations.script_for(migration, self.backend))

    async def _apply(self, number: int, script: str) -> None:
        # executescript commits first, so the migration and its version bump go in one
        # explicit transaction inside the script. Foreign keys are off meanwhile (a table
        # rebuilt to change a CHECK would cascade its DROP to other tables) and checked
        # before the COMMIT: a violation fails the migration.
        await self._conn.executescript(
            f"PRAGMA foreign_keys = OFF;\nBEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};"
        )
        try:
            async with self._conn.execute("PRAGMA foreign_key_check") as cursor:
                broken = await cursor.fetchall()
            if broken:
                raise RuntimeError(f"migration {number} breaks foreign keys: {broken}")
            await self._conn.commit()
        except BaseException:
            await self._conn.rollback()
            raise
        finally:
            await self._conn.execute("PRAGMA foreign_keys = ON")

    @asynccontextmanager
    async def transaction(self, *, durable: bool = False) -> AsyncIterator[SqliteTransaction]:
        """BEGIN IMMEDIATE … COMMIT. ``durable``: synchronous=FULL for this commit, so it
        is on disk (fsync) before this returns, and so is every commit before it."""
        async with self._lock:
            if durable:
                await self._conn.execute("PRAGMA synchronous = FULL")
            try:
                try:
                    # Inside the try: a task cancelled while it awaits BEGIN still has the
                    # BEGIN run on aiosqlite's thread, and the rollback (queued after it) must
                    # end it, or the shared connection stays in a transaction and every later
                    # write fails.
                    await self._conn.execute("BEGIN IMMEDIATE")
                    yield SqliteTransaction(self._conn)
                except BaseException:
                    await self._conn.rollback()
                    raise
                await self._conn.commit()
            finally:
                if durable:
                    await self._conn.execute("PRAGMA synchronous = NORMAL")

    async def fetch_all(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        async with self._lock:
            return list(await self._conn.execute_fetchall(sql, tuple(params)))

    async def fetch_one(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        async with self._lock, self._conn.execute(sql, tuple(params)) as cursor:
            row: Row | None = await cursor.fetchone()
            return row
