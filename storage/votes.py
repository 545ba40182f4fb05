"""Votes (the feedback table) and what they label."""

from __future__ import annotations

from domain.records import (
    LabelledEmbedding,
    RetainedVote,
    Submission,
    VoteChange,
)
from domain.votes import Vote
from storage.db import Database, Transaction
from storage.rows import (
    NEW_VOTE,
    SUBMISSION_COLUMNS,
    get_submission,
    submission_from_row,
)
from storage.timestamps import utc_now


class VoteStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def upsert_vote(self, user_id: int, submission_id: int, vote: Vote) -> VoteChange | None:
        """Record `user_id`'s vote on a submission; None if the submission does not exist.

        The revision is bumped only when the vote actually changes, so a repeated
        tap or a redelivered callback changes nothing twice.
        """
        # durable: acknowledged votes survive power loss
        async with self.db.transaction(durable=True) as conn:
            sub_row = await conn.fetch_one(
                f"SELECT {SUBMISSION_COLUMNS} FROM submissions WHERE id = ?", (submission_id,)
            )
            if sub_row is None:
                return None
            previous = await _current_vote(conn, user_id, submission_id)
            if previous is not vote:
                # The counter's row lock orders vote writers (SQLite's are serial anyway).
                # Read again under it: on PostgreSQL another worker may have committed this
                # same tap since the read above, and it must not count twice.
                await conn.execute("UPDATE revision_counter SET value = value + 1")
                previous = await _current_vote(conn, user_id, submission_id)
                if previous is vote:  # give the number back: the row lock kept it ours
                    await conn.execute("UPDATE revision_counter SET value = value - 1")
                else:
                    await _write_vote(conn, user_id, submission_id, vote)
        return VoteChange(
            submission_from_row(sub_row), vote, previous, changed=previous is not vote
        )

    async def voted_image_vectors(
        self, user_id: int, encoder_version: str, *, liked: bool
    ) -> dict[int, bytes]:
        """image_id → vector for every image this person liked (or disliked)."""
        rows = await self.db.fetch_all(
            "SELECT DISTINCT s.image_id, e.vector FROM feedback f"
            " JOIN submissions s ON s.id = f.submission_id"
            " JOIN embeddings e ON e.image_id = s.image_id"
            "  AND e.encoder_version = ? AND e.kind = 'image'"
            f" WHERE f.user_id = ? AND f.vote {'!=' if liked else '='} 'dislike'",
            (encoder_version, user_id),
        )
        return {int(r[0]): r[1] for r in rows}

    async def image_vote(self, user_id: int, image_id: int) -> tuple[int, Vote] | None:
        """(submission id, vote) of this person's latest vote on this image content."""
        row = await self.db.fetch_one(
            "SELECT f.submission_id, f.vote FROM feedback f"
            " JOIN submissions s ON s.id = f.submission_id"
            " WHERE f.user_id = ? AND s.image_id = ? ORDER BY f.revision DESC LIMIT 1",
            (user_id, image_id),
        )
        return None if row is None else (int(row[0]), Vote(row[1]))

    async def image_has_vote(self, user_id: int, image_id: int, *, liked: bool) -> bool:
        row = await self.db.fetch_one(
            "SELECT 1 FROM feedback f JOIN submissions s ON s.id = f.submission_id"
            f" WHERE f.user_id = ? AND s.image_id = ? AND f.vote {'!=' if liked else '='} 'dislike'",
            (user_id, image_id),
        )
        return row is not None

    async def users_with_votes(self) -> list[int]:
        rows = await self.db.fetch_all("SELECT DISTINCT user_id FROM feedback")
        return [int(r[0]) for r in rows]

    async def last_vote(self, user_id: int) -> tuple[Submission, Vote] | None:
        row = await self.db.fetch_one(
            "SELECT f.submission_id, f.vote FROM feedback f WHERE f.user_id = ?"
            " ORDER BY f.revision DESC LIMIT 1",
            (user_id,),
        )
        if row is None:
            return None
        submission = await get_submission(self.db, int(row[0]))
        assert submission is not None  # feedback → submission is a foreign key
        return submission, Vote(row[1])

    async def delete_vote(self, user_id: int, submission_id: int) -> bool:
        async with self.db.transaction(durable=True) as conn:
            cur = await conn.execute(
                "DELETE FROM feedback WHERE user_id = ? AND submission_id = ?",
                (user_id, submission_id),
            )
            return cur.rowcount > 0

    async def labelled_embeddings(
        self, user_id: int, encoder_version: str
    ) -> list[LabelledEmbedding]:
        rows = await self.db.fetch_all(
            "SELECT f.submission_id, s.image_id, f.vote, e.vector FROM feedback f"
            " JOIN submissions s ON s.id = f.submission_id"
            " JOIN embeddings e ON e.image_id = s.image_id"
            "  AND e.encoder_version = ? AND e.kind = 'image'"
            " WHERE f.user_id = ? ORDER BY f.revision",
            (encoder_version, user_id),
        )
        return [LabelledEmbedding(r[0], r[1], Vote(r[2]), r[3]) for r in rows]

    async def everyones_labelled_embeddings(
        self, encoder_version: str
    ) -> list[tuple[int, LabelledEmbedding]]:
        """(voter's user id, vote with its image vector) for every vote on every platform:
        what the crowd model learns from."""
        rows = await self.db.fetch_all(
            "SELECT f.user_id, f.submission_id, s.image_id, f.vote, e.vector FROM feedback f"
            " JOIN submissions s ON s.id = f.submission_id"
            " JOIN embeddings e ON e.image_id = s.image_id"
            "  AND e.encoder_version = ? AND e.kind = 'image'"
            " ORDER BY f.revision",
            (encoder_version,),
        )
        return [(int(r[0]), LabelledEmbedding(r[1], r[2], Vote(r[3]), r[4])) for r in rows]

    async def latest_revision(self, user_id: int) -> int:
        row = await self.db.fetch_one(
            "SELECT COALESCE(MAX(revision), 0) FROM feedback WHERE user_id = ?", (user_id,)
        )
        return int(row[0]) if row else 0

    async def users_with_new_votes(self, min_new_votes: int) -> list[tuple[int, int]]:
        """(user_id, n) for everyone with ≥ min_new_votes votes changed since their newest head
        (any status: a rejected candidate also consumed the votes it was trained on)."""
        rows = await self.db.fetch_all(
            f"SELECT f.user_id, COUNT(*) FROM feedback f WHERE {NEW_VOTE}"
            " GROUP BY f.user_id HAVING COUNT(*) >= ? ORDER BY f.user_id",
            (min_new_votes,),
        )
        return [(int(r[0]), int(r[1])) for r in rows]

    async def new_votes(self, user_id: int) -> int:
        """The person's votes changed since their newest head, as users_with_new_votes counts."""
        row = await self.db.fetch_one(
            f"SELECT COUNT(*) FROM feedback f WHERE f.user_id = ? AND {NEW_VOTE}", (user_id,)
        )
        return int(row[0]) if row else 0

    async def vote_history(self, user_id: int) -> list[tuple[str, Vote]]:
        """(time, vote) of every current vote, oldest first, for the learning-curve chart."""
        rows = await self.db.fetch_all(
            "SELECT created_at, vote FROM feedback WHERE user_id = ? ORDER BY created_at",
            (user_id,),
        )
        return [(r[0], Vote(r[1])) for r in rows]

    async def retained_votes(self) -> list[RetainedVote]:
        """Every vote whose image file is still on disk: what fine-tuning learns from."""
        rows = await self.db.fetch_all(
            "SELECT f.user_id, f.submission_id, f.vote, i.file_path FROM feedback f"
            " JOIN submissions s ON s.id = f.submission_id"
            " JOIN images i ON i.id = s.image_id"
            " WHERE i.file_path IS NOT NULL ORDER BY f.revision"
        )
        return [RetainedVote(int(r[0]), int(r[1]), Vote(r[2]), str(r[3])) for r in rows]

    async def latest_revision_overall(self) -> int:
        row = await self.db.fetch_one("SELECT COALESCE(MAX(revision), 0) FROM feedback")
        return int(row[0]) if row else 0

    async def votes_after(self, revision: int) -> int:
        row = await self.db.fetch_one(
            "SELECT COUNT(*) FROM feedback WHERE revision > ?", (revision,)
        )
        return int(row[0]) if row else 0


async def _current_vote(conn: Transaction, user_id: int, submission_id: int) -> Vote | None:
    # fetch_all: at most one row (a unique key), and one trip to aiosqlite's thread, not three.
    rows = await conn.fetch_all(
        "SELECT vote FROM feedback WHERE user_id = ? AND submission_id = ?",
        (user_id, submission_id),
    )
    return Vote(rows[0][0]) if rows else None


async def _write_vote(conn: Transaction, user_id: int, submission_id: int, vote: Vote) -> None:
    """The vote, numbered with the revision just taken from the counter."""
    now = utc_now()
    await conn.execute(
        "INSERT INTO feedback (user_id, submission_id, vote, revision, created_at, updated_at)"
        " VALUES (?, ?, ?, (SELECT value FROM revision_counter WHERE id = 1), ?, ?)"
        " ON CONFLICT (user_id, submission_id) DO UPDATE SET"
        " vote = excluded.vote, revision = excluded.revision, updated_at = excluded.updated_at",
        (user_id, submission_id, vote.value, now, now),
    )
