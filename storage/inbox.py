"""The durable inbox: every update a chat platform delivered, stored before it is confirmed.

An update is stored (claimed by the process that received it, under a lease) before the
platform is told it arrived, and marked done once its handlers have finished. A process
killed in between leaves the row undone; once its lease has expired, any process may claim
it again and handle it. Times are unix seconds, passed in by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from storage.db import Database


@dataclass(frozen=True)
class InboxRow:
    update_id: int
    payload: str  # the update as received (JSON)
    received_at: float
    attempts: int  # claims so far, the first one included


class InboxStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(
        self,
        platform: str,
        updates: Sequence[tuple[int, str]],
        *,
        claimed_by: str,
        now: float,
        lease_until: float,
    ) -> list[int]:
        """Store (update id, JSON) pairs in one transaction, claimed by ``claimed_by``; the ids
        that were new. An update stored before (a redelivery) is left as it is. Synced to
        disk before this returns: the caller confirms the updates to the platform next."""
        new: list[int] = []
        async with self.db.transaction(durable=True) as tx:
            for update_id, payload in updates:
                result = await tx.execute(
                    "INSERT INTO inbox (platform, update_id, payload, received_at, claimed_by,"
                    " lease_until, attempts) VALUES (?, ?, ?, ?, ?, ?, 1)"
                    " ON CONFLICT (platform, update_id) DO NOTHING",
                    (platform, update_id, payload, now, claimed_by, lease_until),
                )
                if result.rowcount == 1:
                    new.append(update_id)
        return new

    async def abandoned(
        self, platform: str, *, expired_before: float, after: int = -1, limit: int = 100
    ) -> list[InboxRow]:
        """Rows not done whose lease ended before ``expired_before``, oldest first, from the
        update after ``after`` on."""
        rows = await self.db.fetch_all(
            "SELECT update_id, payload, received_at, attempts FROM inbox"
            " WHERE platform = ? AND done_at IS NULL AND update_id > ?"
            " AND (lease_until IS NULL OR lease_until < ?) ORDER BY update_id LIMIT ?",
            (platform, after, expired_before, limit),
        )
        return [InboxRow(int(r[0]), str(r[1]), float(r[2]), int(r[3])) for r in rows]

    async def claim(
        self,
        platform: str,
        update_id: int,
        *,
        claimed_by: str,
        expired_before: float,
        lease_until: float,
    ) -> bool:
        """Take over an undone row whose lease ended before ``expired_before``: True if this
        caller got it (another process may have claimed it a moment earlier)."""
        async with self.db.transaction() as tx:
            result = await tx.execute(
                "UPDATE inbox SET claimed_by = ?, lease_until = ?, attempts = attempts + 1"
                " WHERE platform = ? AND update_id = ? AND done_at IS NULL"
                " AND (lease_until IS NULL OR lease_until < ?)",
                (claimed_by, lease_until, platform, update_id, expired_before),
            )
            return result.rowcount == 1

    async def renew(
        self, platform: str, update_ids: Sequence[int], *, claimed_by: str, lease_until: float
    ) -> None:
        """Extend this process's leases on rows it is still handling."""
        if not update_ids:
            return
        async with self.db.transaction() as tx:
            for update_id in update_ids:
                await tx.execute(
                    "UPDATE inbox SET lease_until = ? WHERE platform = ? AND update_id = ?"
                    " AND claimed_by = ? AND done_at IS NULL",
                    (lease_until, platform, update_id, claimed_by),
                )

    async def mark_done(self, platform: str, update_id: int, *, now: float) -> None:
        # Not synced: a done mark lost in a power cut means one more (idempotent) replay.
        async with self.db.transaction() as tx:
            await tx.execute(
                "UPDATE inbox SET done_at = ? WHERE platform = ? AND update_id = ?"
                " AND done_at IS NULL",
                (now, platform, update_id),
            )

    async def purge_done(self, *, done_before: float) -> int:
        """Delete rows done before ``done_before``; how many went."""
        async with self.db.transaction() as tx:
            result = await tx.execute(
                "DELETE FROM inbox WHERE done_at IS NOT NULL AND done_at < ?", (done_before,)
            )
            return max(0, result.rowcount)

    async def pending(self) -> int:
        """Rows not done yet, every platform and process together."""
        row = await self.db.fetch_one("SELECT COUNT(*) FROM inbox WHERE done_at IS NULL")
        return 0 if row is None else int(row[0])
