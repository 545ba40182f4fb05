"""The one database interface every store uses, whichever backend runs under it.

    async with db.transaction(durable=True) as tx:
        row = await tx.fetch_one("SELECT id FROM users WHERE platform = ?", (platform,))
        done = await tx.execute("UPDATE ... WHERE id = ?", (row["id"],))
        done.rowcount

SQL is written once, with ``?`` placeholders, in the dialect both SQLite (3.35+) and
PostgreSQL run: ``RETURNING`` instead of ``lastrowid``, ``ON CONFLICT`` instead of
``INSERT OR …``, ``COALESCE``, ``IS NOT DISTINCT FROM``, and times passed in from Python
(`storage.timestamps`). Rows answer to ``row["name"]`` and ``row[0]`` on both.

`storage.connect.open_database(url)` opens one; `storage.store.Store` puts the stores on it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol


class Row(Protocol):
    """A result row: by position or by column name, iterable, and ``dict(row)``-able."""

    def __getitem__(self, key: int | str, /) -> Any: ...
    def __iter__(self) -> Iterator[Any]: ...
    def __len__(self) -> int: ...
    def keys(self) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class ExecResult:
    """What `execute` says about a statement: how many rows it changed."""

    rowcount: int


class Transaction(Protocol):
    """Statements inside one transaction (what `Database.transaction()` yields)."""

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> ExecResult: ...
    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> ExecResult: ...
    async def fetch_one(self, sql: str, params: Iterable[Any] = ()) -> Row | None: ...
    async def fetch_all(self, sql: str, params: Iterable[Any] = ()) -> list[Row]: ...


class Database(ABC):
    """A migrated database: transactions, and single statements outside one."""

    #: "sqlite" or "postgresql": for logs and tests; stores never branch on it.
    backend: str

    @abstractmethod
    def transaction(self, *, durable: bool = False) -> AbstractAsyncContextManager[Transaction]:
        """BEGIN … COMMIT, rolled back on any exception. ``durable``: the commit survives a
        power cut once this returns (votes, deletions); otherwise only a killed process."""

    @abstractmethod
    async def fetch_all(self, sql: str, params: Iterable[Any] = ()) -> list[Row]: ...

    @abstractmethod
    async def fetch_one(self, sql: str, params: Iterable[Any] = ()) -> Row | None: ...

    @abstractmethod
    async def schema_version(self) -> int: ...

    @abstractmethod
    async def close(self) -> None: ...

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> ExecResult:
        """One statement in its own transaction."""
        async with self.transaction() as tx:
            return await tx.execute(sql, params)
