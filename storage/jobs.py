"""Training jobs: enqueued by whoever notices training is due, claimed by one trainer.

A job is one training task (a person's head, the crowd model, a CLIP fine-tune) or one
message a trainer leaves for a worker to send ('notify'). Enqueueing is idempotent: the
unique (kind, user, due_key) index makes a second enqueue of the same due point a no-op.
Claiming is a conditional UPDATE whose row count says who won: race-free on SQLite (one
writer at a time) and on PostgreSQL (the second UPDATE re-checks the row after the first
commits). A claim holds a lease; a trainer that dies leaves it to expire, and the job is
claimed again (attempts + 1) until JOB_MAX_ATTEMPTS, then it is marked failed.

Times are unix seconds passed in by the caller, so tests can move the clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from storage.db import Database, Row

KINDS = ("head", "crowd", "finetune", "notify")

# Another claim of the same kind for the same person (or the same global model) still
# holds its lease: two trainers must not train one person at once, whatever the due keys.
_NONE_RUNNING = (
    "NOT EXISTS (SELECT 1 FROM jobs r WHERE r.kind = jobs.kind"
    " AND COALESCE(r.user_id, -1) = COALESCE(jobs.user_id, -1)"
    " AND r.status = 'running' AND r.lease_until >= ? AND r.id != jobs.id)"
)
_CLAIMABLE = "(jobs.status = 'queued' OR (jobs.status = 'running' AND jobs.lease_until < ?))"


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    user_id: int | None
    due_key: str
    status: str
    claimed_by: str | None
    lease_until: float | None
    attempts: int
    created_at: float
    finished_at: float | None
    detail: str | None


def _job(row: Row) -> Job:
    return Job(
        id=int(row["id"]),
        kind=str(row["kind"]),
        user_id=None if row["user_id"] is None else int(row["user_id"]),
        due_key=str(row["due_key"]),
        status=str(row["status"]),
        claimed_by=row["claimed_by"],
        lease_until=row["lease_until"],
        attempts=int(row["attempts"]),
        created_at=float(row["created_at"]),
        finished_at=row["finished_at"],
        detail=row["detail"],
    )


def _claimable_where(
    kinds: Sequence[str], now: float, platforms: Sequence[str] | None
) -> tuple[str, list[object]]:
    where = f"kind IN ({', '.join('?' for _ in kinds)}) AND {_CLAIMABLE}"
    params: list[object] = [*kinds, now]
    if platforms is not None:
        people = ", ".join("?" for _ in platforms)
        where += f" AND user_id IN (SELECT id FROM users WHERE platform IN ({people}))"
        params += platforms
    return where, params


# Any constant unique to this lock among the advisory locks Tastebot takes.
CLAIM_LOCK = 7_361_202


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        # SQLite has one writer at a time, so a claim never contends inside its transaction.
        # PostgreSQL's READ COMMITTED would let two claims of different jobs for one person
        # both see none of theirs running: claims there queue on one advisory lock (they
        # take milliseconds), and skip rows another transaction has locked.
        self.serialise_claims = self.skip_locked = db.backend == "postgresql"

    async def enqueue(
        self, kind: str, user_id: int | None, due_key: str, now: float, detail: str | None = None
    ) -> bool:
        """Queue a job; False if this due point is already queued (or ran), or a job of
        this kind for this owner is still waiting (it will see the same votes and more)."""
        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r}")
        async with self.db.transaction() as tx:
            result = await tx.execute(
                "INSERT INTO jobs (kind, user_id, due_key, status, created_at, detail)"
                " SELECT ?, ?, ?, 'queued', ?, ? WHERE NOT EXISTS (SELECT 1 FROM jobs q"
                "  WHERE q.kind = ? AND COALESCE(q.user_id, -1) = COALESCE(?, -1)"
                "  AND q.status = 'queued' AND ? != 'notify')"
                " ON CONFLICT DO NOTHING",
                (kind, user_id, due_key, now, detail, kind, user_id, kind),
            )
            return result.rowcount == 1

    async def claim(
        self,
        worker: str,
        *,
        kinds: Sequence[str],
        now: float,
        lease_seconds: float,
        max_attempts: int,
        platforms: Sequence[str] | None = None,
    ) -> Job | None:
        """Take the oldest claimable job of ``kinds`` (for people of ``platforms``, if
        given) under a lease until ``now + lease_seconds``; None if there is none."""
        if platforms is not None and not platforms:
            return None
        where, params = _claimable_where(kinds, now, platforms)
        # A read first: an empty queue, polled every second by every process, takes no lock.
        if await self.db.fetch_one(f"SELECT 1 FROM jobs WHERE {where} LIMIT 1", params) is None:
            return None
        claimed = None
        async with self.db.transaction() as tx:
            if self.serialise_claims:
                await tx.execute("SELECT pg_advisory_xact_lock(?)", (CLAIM_LOCK,))
            await tx.execute(
                "UPDATE jobs SET status = 'failed', finished_at = ?,"
                " detail = COALESCE(detail, 'its trainer stopped during every attempt')"
                " WHERE status = 'running' AND lease_until < ? AND attempts >= ?",
                (now, now, max_attempts),
            )
            lock = " FOR UPDATE SKIP LOCKED" if self.skip_locked else ""
            rows = await tx.fetch_all(
                f"SELECT id FROM jobs WHERE {where} ORDER BY id LIMIT 20{lock}", params
            )
            for row in rows:
                result = await tx.execute(
                    "UPDATE jobs SET status = 'running', claimed_by = ?, lease_until = ?,"
                    f" attempts = attempts + 1 WHERE id = ? AND {_CLAIMABLE} AND {_NONE_RUNNING}",
                    (worker, now + lease_seconds, int(row[0]), now, now),
                )
                if result.rowcount == 1:
                    claimed = int(row[0])
                    break
        return None if claimed is None else await self.get(claimed)

    async def renew(self, job_id: int, worker: str, lease_until: float) -> bool:
        """Extend a claim still held; False if it was lost (expired and claimed again)."""
        async with self.db.transaction() as tx:
            result = await tx.execute(
                "UPDATE jobs SET lease_until = ?"
                " WHERE id = ? AND claimed_by = ? AND status = 'running'",
                (lease_until, job_id, worker),
            )
            return result.rowcount == 1

    async def finish(
        self, job_id: int, worker: str, *, now: float, detail: str | None, ok: bool = True
    ) -> bool:
        """Mark a claimed job done (or failed); False if this worker no longer holds it."""
        async with self.db.transaction() as tx:
            result = await tx.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, lease_until = NULL, detail = ?"
                " WHERE id = ? AND claimed_by = ? AND status = 'running'",
                ("done" if ok else "failed", now, detail, job_id, worker),
            )
            return result.rowcount == 1

    async def release(self, job_id: int, worker: str, *, detail: str) -> bool:
        """Give a claimed job back to the queue after a failed attempt (to retry later)."""
        async with self.db.transaction() as tx:
            result = await tx.execute(
                "UPDATE jobs SET status = 'queued', claimed_by = NULL, lease_until = NULL,"
                " detail = ? WHERE id = ? AND claimed_by = ? AND status = 'running'",
                (detail, job_id, worker),
            )
            return result.rowcount == 1

    async def prune(self, finished_before: float) -> int:
        """Delete jobs done or failed before then; how many. A due point pruned and queued
        again is harmless: whoever runs it finds it no longer due."""
        async with self.db.transaction() as tx:
            result = await tx.execute(
                "DELETE FROM jobs WHERE status IN ('done', 'failed') AND finished_at < ?",
                (finished_before,),
            )
            return int(result.rowcount)

    async def get(self, job_id: int) -> Job | None:
        row = await self.db.fetch_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return None if row is None else _job(row)

    async def jobs(self, kind: str | None = None) -> list[Job]:
        """Every job (of ``kind``), oldest first: for /stats, logs and tests."""
        if kind is None:
            rows = await self.db.fetch_all("SELECT * FROM jobs ORDER BY id")
        else:
            rows = await self.db.fetch_all("SELECT * FROM jobs WHERE kind = ? ORDER BY id", (kind,))
        return [_job(r) for r in rows]
