"""Migrations on PostgreSQL: the version in a `schema_version` table, applied once.

Every worker of a fleet migrates at start. They serialise on a transaction-scoped
advisory lock: the first applies what is missing and commits; the others then find
the version current and apply nothing. All pending migrations and the version bump are
one transaction (PostgreSQL's DDL is transactional): a failure leaves the old schema.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from storage import migrations

log = logging.getLogger(__name__)

# Any constant shared by every Tastebot process; advisory locks are per database.
MIGRATION_LOCK = 0x7A57EB07


async def read_schema_version(conn: psycopg.AsyncConnection[Any]) -> int:
    cur = await conn.execute("SELECT to_regclass('schema_version') IS NOT NULL")
    exists = await cur.fetchone()
    if exists is None or not exists[0]:
        return 0
    cur = await conn.execute("SELECT version FROM schema_version WHERE id = 1")
    row = await cur.fetchone()
    return 0 if row is None else int(row[0])


async def migrate(conn: psycopg.AsyncConnection[Any]) -> None:
    known = migrations.MIGRATIONS
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version"
            " (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
        )
        await conn.execute(
            "INSERT INTO schema_version (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING"
        )
        current = await read_schema_version(conn)
        if current > len(known):
            raise RuntimeError(
                f"database schema v{current} is newer than this code (v{len(known)})"
            )
        for number, migration in enumerate(known[current:], start=current + 1):
            log.info("applying migration %d", number)
            # No parameters: psycopg sends the script as one simple query, several statements.
            await conn.execute(migrations.script_for(migration, "postgresql").encode())
        if current < len(known):
            await conn.execute("UPDATE schema_version SET version = %s WHERE id = 1", (len(known),))
