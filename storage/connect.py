"""Opening the database a DATABASE_URL names, on its backend."""

from __future__ import annotations

from storage.db import Database
from storage.urls import parse_database_url


async def open_database(url: str) -> Database:
    """Open (creating and migrating as needed) ``sqlite:///path`` or
    ``postgresql://user:password@host:port/name``."""
    target = parse_database_url(url)
    if target.path is not None:
        from storage.sqlite_db import SqliteDatabase

        return await SqliteDatabase.open(target.path)
    # Imported here: an SQLite install never loads the PostgreSQL driver.
    from storage.postgres_db import PostgresDatabase

    return await PostgresDatabase.connect(target.url)
