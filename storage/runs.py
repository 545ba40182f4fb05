"""Training runs: what ran, when, on how many labels, and how it ended."""

from __future__ import annotations

from storage.db import Database
from storage.timestamps import utc_now


class RunStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def start_training_run(self, user_id: int | None, kind: str, trigger: str) -> int:
        async with self.db.transaction() as conn:
            row = await conn.fetch_one(
                "INSERT INTO training_runs (user_id, kind, trigger, started_at)"
                " VALUES (?, ?, ?, ?) RETURNING id",
                (user_id, kind, trigger, utc_now()),
            )
        assert row is not None
        return int(row[0])

    async def finish_training_run(
        self,
        run_id: int,
        *,
        outcome: str,
        n_labels: int | None = None,
        model_version_id: int | None = None,
        detail: str | None = None,
    ) -> None:
        await self.db.execute(
            "UPDATE training_runs SET outcome = ?, n_labels = ?, model_version_id = ?, detail = ?,"
            " finished_at = ? WHERE id = ?",
            (outcome, n_labels, model_version_id, detail, utc_now(), run_id),
        )

    async def fail_abandoned_runs(self) -> int:
        """At start-up: a run still 'running' belongs to a process that died."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "UPDATE training_runs SET outcome = 'failed',"
                " detail = 'abandoned: the bot stopped while it ran',"
                " finished_at = ? WHERE outcome = 'running'",
                (utc_now(),),
            )
            return cur.rowcount
