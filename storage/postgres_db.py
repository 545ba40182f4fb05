"""PostgreSQL: a connection pool, one connection per transaction, and migrations.

psycopg 3 rather than asyncpg: its ``%s`` placeholders map one to one from the ``?`` the
stores write (asyncpg numbers them, ``$1``), it ships an async pool (psycopg_pool), it
returns BYTEA as bytes, and it is the maintained successor of psycopg2, the driver most
PostgreSQL deployments already know.

Every connection runs in autocommit: a statement outside `transaction()` is its own
transaction, and `transaction()` is BEGIN … COMMIT. Results come in binary format:
embeddings arrive as their bytes, not as hex text to decode (half the time for 200).

Transactions run at READ COMMITTED. Where SQLite's single writer made a read-then-write
safe, the store takes a row lock first (see VoteStore.upsert_vote); everything else is one
statement, or ON CONFLICT, or guarded by a unique index.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.rows import RowMaker
from psycopg_pool import AsyncConnectionPool

from storage.db import Database, ExecResult, Row
from storage.postgres_migrate import migrate, read_schema_version

log = logging.getLogger(__name__)

# Connections per process. A transaction holds one only for its few statements (never
# across a download or a model), so 10 carry far more than one process's traffic, and a
# fleet of several workers stays inside PostgreSQL's default max_connections (100).
POOL_SIZE = 10
CONNECT_TIMEOUT_S = 15.0


class PgRow:
    """A row by position or by column name, as sqlite3.Row is."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        # BYTEA arrives as bytes already; memoryview (an older driver's habit) is normalised
        # so embeddings read back identically on both backends.
        self._values = tuple(bytes(v) if isinstance(v, memoryview) else v for v in values)
        self._index = index

    def __getitem__(self, key: int | str, /) -> Any:
        return self._values[self._index[key] if isinstance(key, str) else key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        return list(self._index)

    def __repr__(self) -> str:
        return f"PgRow({dict(zip(self._index, self._values, strict=True))!r})"


def pg_row(cursor: psycopg.AsyncCursor[Any]) -> RowMaker[PgRow]:
    index = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: PgRow(values, index)


@lru_cache(maxsize=1024)
def to_pyformat(sql: str) -> str:
    """``?`` → ``%s`` (and a literal ``%`` → ``%%``). No store writes ``?`` or ``%`` inside
    a string literal, so no SQL parsing is needed."""
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresTransaction:
    """Statements inside one BEGIN … COMMIT on one pooled connection."""

    def __init__(self, connection: psycopg.AsyncConnection[PgRow]) -> None:
        self._conn = connection

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> ExecResult:
        async with self._conn.cursor(binary=True) as cur:
            await cur.execute(to_pyformat(sql), tuple(params))
            return ExecResult(cur.rowcount)

    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> ExecResult:
        async with self._conn.cursor(binary=True) as cur:
            await cur.executemany(to_pyformat(sql), [tuple(row) for row in rows])
            return ExecResult(cur.rowcount)

    async def fetch_one(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        async with self._conn.cursor(binary=True) as cur:
            await cur.execute(to_pyformat(sql), tuple(params))
            return await cur.fetchone()

    async def fetch_all(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        async with self._conn.cursor(binary=True) as cur:
            await cur.execute(to_pyformat(sql), tuple(params))
            return list(await cur.fetchall())


class PostgresDatabase(Database):
    """A pool of autocommit connections to one PostgreSQL database."""

    backend = "postgresql"

    def __init__(self, pool: AsyncConnectionPool[psycopg.AsyncConnection[PgRow]]) -> None:
        self._pool = pool

    @classmethod
    async def connect(cls, url: str, *, pool_size: int = POOL_SIZE) -> PostgresDatabase:
        # Migrate on a connection of its own first: a wrong host or password fails here with
        # libpq's own words, where a pool would only time out.
        async with await psycopg.AsyncConnection.connect(
            url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT_S)
        ) as conn:
            await migrate(conn)
        pool: AsyncConnectionPool[psycopg.AsyncConnection[PgRow]] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True, "row_factory": pg_row},
            open=False,
            name="tastebot",
        )
        try:
            await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except BaseException:
            await pool.close()
            raise
        return cls(pool)

    async def close(self) -> None:
        await self._pool.close()

    async def schema_version(self) -> int:
        async with self._pool.connection() as conn:
            return await read_schema_version(conn)

    @asynccontextmanager
    async def transaction(self, *, durable: bool = False) -> AsyncIterator[PostgresTransaction]:
        """BEGIN … COMMIT on a pooled connection. Every commit waits for the WAL flush
        (synchronous_commit on, the server's default), so ``durable`` asks for nothing more."""
        async with self._pool.connection() as conn, conn.transaction():
            yield PostgresTransaction(conn)

    async def fetch_all(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        async with self._pool.connection() as conn, conn.cursor(binary=True) as cur:
            await cur.execute(to_pyformat(sql), tuple(params))
            return list(await cur.fetchall())

    async def fetch_one(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        async with self._pool.connection() as conn, conn.cursor(binary=True) as cur:
            await cur.execute(to_pyformat(sql), tuple(params))
            return await cur.fetchone()
