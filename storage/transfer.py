"""Copy an SQLite install's database into an empty PostgreSQL one, ids and all.

    python -m storage.transfer sqlite:///data/tastebot.sqlite3 postgresql://user:pw@host/db

Stop the bot first. Both sides are migrated to this code's schema, then every table is
copied in foreign-key order inside one PostgreSQL transaction (all or nothing), and each
identity column is moved past the highest id copied. FAISS indexes and files under
DATA_DIR are not in the database: keep DATA_DIR as it is.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from storage.connect import open_database
from storage.db import Database, Transaction

# Parents before children: PostgreSQL checks each foreign key as the row goes in.
TABLES = (
    "users",
    "images",
    "model_versions",  # parent_id points at older rows: copied in id order
    "submissions",
    "embeddings",
    "feedback",
    "training_runs",
    "submission_texts",
    "inbox",
    "jobs",
)
IDENTITY_TABLES = (
    "users",
    "images",
    "model_versions",
    "submissions",
    "feedback",
    "training_runs",
    "jobs",
)
BATCH = 500


async def copy_database(source: Database, target: Database) -> dict[str, int]:
    """Rows copied per table. Refuses a target that already has people or images."""
    if source.backend != "sqlite" or target.backend != "postgresql":
        raise ValueError("copies from SQLite to PostgreSQL only")
    for table in ("users", "images"):
        row = await target.fetch_one(f"SELECT COUNT(*) FROM {table}")
        if row is not None and int(row[0]) > 0:
            raise RuntimeError(f"the PostgreSQL database is not empty: {table} has rows")
    copied: dict[str, int] = {}
    async with target.transaction(durable=True) as tx:
        for table in TABLES:
            copied[table] = await _copy_table(source, tx, table)
        counter = await source.fetch_one("SELECT value FROM revision_counter WHERE id = 1")
        if counter is not None:
            await tx.execute("UPDATE revision_counter SET value = ? WHERE id = 1", (counter[0],))
        for table in IDENTITY_TABLES:
            # The next id the identity hands out: one past the highest copied.
            await tx.fetch_one(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                f" COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
            )
    return copied


async def _copy_table(source: Database, tx: Transaction, table: str) -> int:
    # Keyset pages over SQLite's rowid: every table here has one, in insertion order.
    last, total = 0, 0
    while True:
        rows = await source.fetch_all(
            f"SELECT rowid AS rowid_, * FROM {table} WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (last, BATCH),
        )
        if not rows:
            return total
        columns = rows[0].keys()[1:]
        marks = ", ".join("?" for _ in columns)
        await tx.executemany(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
            [tuple(row)[1:] for row in rows],
        )
        last, total = int(rows[-1][0]), total + len(rows)


async def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print("usage: " + __doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    source = await open_database(argv[0])
    try:
        target = await open_database(argv[1])
        try:
            copied = await copy_database(source, target)
        finally:
            await target.close()
    finally:
        await source.close()
    print(", ".join(f"{table}: {n}" for table, n in copied.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(sys.argv[1:])))
