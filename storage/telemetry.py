"""What /healthz and /metrics read from the database: whether it answers, and counts."""

from __future__ import annotations

from storage.db import Database


class TelemetryStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def ping(self) -> None:
        """Raises when the database does not answer."""
        await self.db.fetch_one("SELECT 1")

    async def training_runs(self) -> dict[tuple[str, str], int]:
        """(kind, outcome) → training runs recorded, every process's together."""
        rows = await self.db.fetch_all(
            "SELECT kind, outcome, COUNT(*) FROM training_runs GROUP BY kind, outcome"
        )
        return {(str(r[0]), str(r[1])): int(r[2]) for r in rows}
