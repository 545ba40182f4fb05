"""The SQLite connection: pragmas, migrations, and one-at-a-time access."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
from aiosqlite.context import Result

from storage.migrations import MIGRATIONS

log = logging.getLogger(__name__)

Row = aiosqlite.Row


class Transaction:
    """What `Database.transaction()` yields: statements inside one transaction.

    New code uses only `execute` (its result's ``rowcount``), `fetch_one` and `fetch_all`
    with ``?`` placeholders and SQL that PostgreSQL runs too (``ON CONFLICT``, ``RETURNING``
    instead of ``lastrowid``); `execute`'s aiosqlite result is also an async context manager,
    which older stores still use.
    """

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._conn = connection

    def execute(self, sql: str, params: Iterable[Any] = ()) -> Result[aiosqlite.Cursor]:
        return self._conn.execute(sql, tuple(params))

    def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> Result[aiosqlite.Cursor]:
        return self._conn.executemany(sql, [tuple(row) for row in rows])

    async def fetch_one(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        async with self._conn.execute(sql, tuple(params)) as cursor:
            return await cursor.fetchone()

    async def fetch_all(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        async with self._conn.execute(sql, tuple(params)) as cursor:
            return list(await cursor.fetchall())


class Database:
    """One aiosqlite connection shared by the whole process.

    aiosqlite runs every statement on one background thread, but statements
    from different coroutines would still interleave inside each other's
    transactions; the lock makes each `transaction()` / `fetch*` call atomic.
    """

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._conn = connection
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, *, busy_timeout_ms: int = 5000) -> Database:
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
        if current > len(MIGRATIONS):
            raise RuntimeError(
                f"database schema v{current} is newer than this code (v{len(MIGRATIONS)})"
            )
        for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
            log.info("applying migration %d", number)
            async with self._lock:
                # executescript commits first, so the migration and its version bump go in
                # one explicit transaction inside the script. Foreign keys are off meanwhile
                # (a table rebuilt to change a CHECK would cascade its DROP to other tables)
                # and checked before the COMMIT: a violation fails the migration.
                await self._conn.executescript(
                    f"PRAGMA foreign_keys = OFF;\nBEGIN IMMEDIATE;\n{script}\n"
                    f"PRAGMA user_version = {number};"
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
    async def transaction(self, *, durable: bool = False) -> AsyncIterator[Transaction]:
        """BEGIN IMMEDIATE … COMMIT, rolled back on any exception. ``durable``: the commit is
        on disk (fsync) before this returns, and so is every commit before it."""
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
                    yield Transaction(self._conn)
                except BaseException:
                    await self._conn.rollback()
                    raise
                await self._conn.commit()
            finally:
                if durable:
                    await self._conn.execute("PRAGMA synchronous = NORMAL")

    async def fetch_all(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        async with self._lock, self._conn.execute(sql, tuple(params)) as cursor:
            return list(await cursor.fetchall())

    async def fetch_one(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        async with self._lock, self._conn.execute(sql, tuple(params)) as cursor:
            return await cursor.fetchone()

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> None:
        """One statement in its own transaction."""
        async with self.transaction() as conn:
            await conn.execute(sql, tuple(params))
