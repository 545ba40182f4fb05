"""Every query Tastebot runs, as named async methods over one `Database`."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Sequence
from typing import Any

import aiosqlite

from storage.db import Database
from storage.records import (
    ForgetReport,
    LabelledEmbedding,
    ModelVersion,
    NewModel,
    RetainedVote,
    Submission,
    Totals,
    User,
    UserCounts,
    UserSummary,
    Vote,
    VoteChange,
)

# A vote (feedback row f) changed since the newest head of its person, of any status: a
# rejected candidate also consumed the votes it was trained on.
_NEW_VOTE = (
    "f.revision > IFNULL((SELECT MAX(m.trained_through) FROM model_versions m"
    " WHERE m.owner_user_id = f.user_id AND m.kind = 'head'), 0)"
)

_SUBMISSION_COLUMNS = (
    "id, user_id, image_id, chat_id, message_id, score, model_version_id, reply_message_id"
)


def _submission(row: sqlite3.Row) -> Submission:
    return Submission(
        id=row["id"],
        user_id=row["user_id"],
        image_id=row["image_id"],
        chat_id=row["chat_id"],
        message_id=row["message_id"],
        score=row["score"],
        model_version_id=row["model_version_id"],
        reply_message_id=row["reply_message_id"],
    )


class Store:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- users -------------------------------------------------------------

    async def get_or_create_user(
        self, platform: str, platform_user_id: str, display_name: str | None = None
    ) -> User:
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO users (platform, platform_user_id, display_name) VALUES (?, ?, ?)"
                " ON CONFLICT (platform, platform_user_id)"
                " DO UPDATE SET display_name = excluded.display_name",
                (platform, platform_user_id, display_name),
            )
            async with conn.execute(
                "SELECT id FROM users WHERE platform = ? AND platform_user_id = ?",
                (platform, platform_user_id),
            ) as cur:
                row = await cur.fetchone()
        assert row is not None
        return User(id=row["id"], platform=platform, platform_user_id=platform_user_id)

    async def get_user(self, user_id: int) -> User | None:
        row = await self.db.fetch_one(
            "SELECT id, platform, platform_user_id FROM users WHERE id = ?", (user_id,)
        )
        if row is None:
            return None
        return User(row["id"], row["platform"], row["platform_user_id"])

    # -- images and embeddings ----------------------------------------------

    async def find_embedding(self, sha256: str, encoder_version: str) -> tuple[int, bytes] | None:
        """(image_id, vector) if this content was already embedded by this encoder."""
        row = await self.db.fetch_one(
            "SELECT i.id, e.vector FROM images i JOIN embeddings e ON e.image_id = i.id"
            " WHERE i.sha256 = ? AND e.encoder_version = ? AND e.kind = 'image'",
            (sha256, encoder_version),
        )
        return None if row is None else (row[0], row[1])

    async def find_embedding_by_image(self, image_id: int, encoder_version: str) -> bytes | None:
        row = await self.db.fetch_one(
            "SELECT vector FROM embeddings WHERE image_id = ? AND encoder_version = ? AND kind = 'image'",
            (image_id, encoder_version),
        )
        return None if row is None else bytes(row[0])

    async def image_file(self, image_id: int) -> str | None:
        row = await self.db.fetch_one("SELECT file_path FROM images WHERE id = ?", (image_id,))
        return None if row is None else row[0]

    async def find_submission(
        self, user_id: int, chat_id: str, message_id: str
    ) -> Submission | None:
        row = await self.db.fetch_one(
            f"SELECT {_SUBMISSION_COLUMNS} FROM submissions"
            " WHERE user_id = ? AND chat_id = ? AND message_id = ?",
            (user_id, chat_id, message_id),
        )
        return None if row is None else _submission(row)

    async def get_submission(self, submission_id: int) -> Submission | None:
        row = await self.db.fetch_one(
            f"SELECT {_SUBMISSION_COLUMNS} FROM submissions WHERE id = ?", (submission_id,)
        )
        return None if row is None else _submission(row)

    async def record_submission(
        self,
        *,
        user_id: int,
        chat_id: str,
        message_id: str,
        caption: str | None,
        sha256: str,
        byte_size: int,
        width: int,
        height: int,
        image_format: str,
        file_path: str | None,
        encoder_version: str,
        vector: bytes,
        dim: int,
        score: float,
        model_version_id: int | None,
    ) -> Submission:
        """Image (once per content), its embedding (once per encoder) and the submission,
        in one transaction. A redelivered message returns the submission already stored."""
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO images (sha256, byte_size, width, height, format, file_path)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (sha256) DO UPDATE SET file_path = COALESCE(file_path, excluded.file_path)",
                (sha256, byte_size, width, height, image_format, file_path),
            )
            async with conn.execute("SELECT id FROM images WHERE sha256 = ?", (sha256,)) as cur:
                image_row = await cur.fetchone()
            assert image_row is not None
            image_id = int(image_row[0])
            await conn.execute(
                "INSERT OR IGNORE INTO embeddings (image_id, encoder_version, kind, dim, vector)"
                " VALUES (?, ?, 'image', ?, ?)",
                (image_id, encoder_version, dim, vector),
            )
            await conn.execute(
                "INSERT OR IGNORE INTO submissions"
                " (user_id, image_id, chat_id, message_id, caption, score, model_version_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (user_id, image_id, chat_id, message_id, caption, score, model_version_id),
            )
            async with conn.execute(
                f"SELECT {_SUBMISSION_COLUMNS} FROM submissions"
                " WHERE user_id = ? AND chat_id = ? AND message_id = ?",
                (user_id, chat_id, message_id),
            ) as cur:
                row = await cur.fetchone()
        assert row is not None
        return _submission(row)

    async def put_submission_text(
        self, submission_id: int, encoder_version: str, text: str, vector: bytes
    ) -> None:
        await self.db.execute(
            "INSERT OR REPLACE INTO submission_texts (submission_id, encoder_version, text, vector)"
            " VALUES (?, ?, ?, ?)",
            (submission_id, encoder_version, text, vector),
        )

    async def submission_text_vectors(
        self, submission_ids: Sequence[int], encoder_version: str
    ) -> dict[int, bytes]:
        """submission id → text vector, for those of `submission_ids` that have text."""
        found: dict[int, bytes] = {}
        ids = list(submission_ids)
        for start in range(0, len(ids), 500):  # SQLite's limit on bound parameters
            chunk = ids[start : start + 500]
            rows = await self.db.fetch_all(
                "SELECT submission_id, vector FROM submission_texts WHERE encoder_version = ?"
                f" AND submission_id IN ({','.join('?' * len(chunk))})",
                (encoder_version, *chunk),
            )
            found.update({int(r[0]): bytes(r[1]) for r in rows})
        return found

    async def set_reply_message(self, submission_id: int, reply_message_id: str) -> None:
        await self.db.execute(
            "UPDATE submissions SET reply_message_id = ? WHERE id = ?",
            (reply_message_id, submission_id),
        )

    async def count_answered_by(self, user_id: int, chat_id: str, reply_message_id: str) -> int:
        """How many of the person's submissions one reply answers (an album's, several)."""
        row = await self.db.fetch_one(
            "SELECT COUNT(*) FROM submissions"
            " WHERE user_id = ? AND chat_id = ? AND reply_message_id = ?",
            (user_id, chat_id, reply_message_id),
        )
        assert row is not None
        return int(row[0])

    # -- votes -------------------------------------------------------------

    async def upsert_vote(self, user_id: int, submission_id: int, vote: Vote) -> VoteChange | None:
        """Record `user_id`'s vote on a submission; None if the submission does not exist.

        The revision is bumped only when the vote actually changes, so a repeated
        tap or a redelivered callback changes nothing twice.
        """
        async with self.db.transaction() as conn:
            async with conn.execute(
                f"SELECT {_SUBMISSION_COLUMNS} FROM submissions WHERE id = ?", (submission_id,)
            ) as cur:
                sub_row = await cur.fetchone()
            if sub_row is None:
                return None
            async with conn.execute(
                "SELECT vote FROM feedback WHERE user_id = ? AND submission_id = ?",
                (user_id, submission_id),
            ) as cur:
                old = await cur.fetchone()
            previous = None if old is None else Vote(old[0])
            if previous is not vote:
                await conn.execute("UPDATE revision_counter SET value = value + 1")
                await conn.execute(
                    "INSERT INTO feedback (user_id, submission_id, vote, revision)"
                    " VALUES (?, ?, ?, (SELECT value FROM revision_counter))"
                    " ON CONFLICT (user_id, submission_id) DO UPDATE SET"
                    "  vote = excluded.vote, revision = excluded.revision,"
                    "  updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
                    (user_id, submission_id, vote.value),
                )
        return VoteChange(_submission(sub_row), vote, previous, changed=previous is not vote)

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
        submission = await self.get_submission(int(row[0]))
        assert submission is not None  # feedback → submission is a foreign key
        return submission, Vote(row[1])

    async def delete_vote(self, user_id: int, submission_id: int) -> bool:
        async with self.db.transaction() as conn:
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

    async def unlabelled_vectors(
        self, user_id: int, encoder_version: str
    ) -> list[tuple[int, bytes]]:
        """(submission id, image embedding) of the images this person sent but has not
        voted on, in the order they were sent."""
        rows = await self.db.fetch_all(
            "SELECT s.id, e.vector FROM submissions s"
            " JOIN embeddings e ON e.image_id = s.image_id"
            "  AND e.encoder_version = ? AND e.kind = 'image'"
            " WHERE s.user_id = ? AND NOT EXISTS"
            "  (SELECT 1 FROM feedback f WHERE f.submission_id = s.id AND f.user_id = ?)"
            " ORDER BY s.id",
            (encoder_version, user_id, user_id),
        )
        return [(int(r[0]), bytes(r[1])) for r in rows]

    async def latest_revision(self, user_id: int) -> int:
        row = await self.db.fetch_one(
            "SELECT IFNULL(MAX(revision), 0) FROM feedback WHERE user_id = ?", (user_id,)
        )
        return int(row[0]) if row else 0

    async def users_with_new_votes(self, min_new_votes: int) -> list[tuple[int, int]]:
        """(user_id, n) for everyone with ≥ min_new_votes votes changed since their newest head
        (any status: a rejected candidate also consumed the votes it was trained on)."""
        rows = await self.db.fetch_all(
            f"SELECT f.user_id, COUNT(*) FROM feedback f WHERE {_NEW_VOTE}"
            " GROUP BY f.user_id HAVING COUNT(*) >= ? ORDER BY f.user_id",
            (min_new_votes,),
        )
        return [(int(r[0]), int(r[1])) for r in rows]

    async def new_votes(self, user_id: int) -> int:
        """The person's votes changed since their newest head, as users_with_new_votes counts."""
        row = await self.db.fetch_one(
            f"SELECT COUNT(*) FROM feedback f WHERE f.user_id = ? AND {_NEW_VOTE}", (user_id,)
        )
        return int(row[0]) if row else 0

    async def user_counts(self, user_id: int) -> UserCounts:
        row = await self.db.fetch_one(
            "SELECT (SELECT COUNT(DISTINCT image_id) FROM submissions WHERE user_id = ?1),"
            " (SELECT COUNT(*) FROM feedback WHERE user_id = ?1 AND vote = 'like'),"
            " (SELECT COUNT(*) FROM feedback WHERE user_id = ?1 AND vote = 'super_like'),"
            " (SELECT COUNT(*) FROM feedback WHERE user_id = ?1 AND vote = 'dislike')",
            (user_id,),
        )
        assert row is not None
        return UserCounts(images=row[0], likes=row[1], super_likes=row[2], dislikes=row[3])

    async def user_summaries(self) -> list[UserSummary]:
        rows = await self.db.fetch_all(
            "SELECT u.platform, u.platform_user_id,"
            " (SELECT COUNT(*) FROM feedback f WHERE f.user_id = u.id) AS votes,"
            " m.version, m.metrics_json"
            " FROM users u LEFT JOIN model_versions m"
            "  ON m.owner_user_id = u.id AND m.kind = 'head' AND m.status = 'active'"
            " ORDER BY u.id"
        )
        return [
            UserSummary(
                platform=r[0],
                platform_user_id=r[1],
                votes=int(r[2]),
                active_version=r[3],
                active_auc=None if r[4] is None else json.loads(r[4]).get("auc"),
            )
            for r in rows
        ]

    async def totals(self) -> Totals:
        row = await self.db.fetch_one(
            "SELECT (SELECT COUNT(*) FROM users), (SELECT COUNT(*) FROM images),"
            " (SELECT COUNT(*) FROM submissions), (SELECT COUNT(*) FROM feedback),"
            " (SELECT COUNT(*) FROM model_versions WHERE status = 'active')"
        )
        assert row is not None
        return Totals(*(int(v) for v in row))

    # -- model versions ------------------------------------------------------

    async def active_model(self, user_id: int, kind: str = "head") -> ModelVersion | None:
        row = await self.db.fetch_one(
            "SELECT * FROM model_versions WHERE owner_user_id = ? AND kind = ? AND status = 'active'",
            (user_id, kind),
        )
        return None if row is None else ModelVersion.from_row(row)

    async def model_versions(self, user_id: int, kind: str = "head") -> list[ModelVersion]:
        rows = await self.db.fetch_all(
            "SELECT * FROM model_versions WHERE owner_user_id = ? AND kind = ? ORDER BY version",
            (user_id, kind),
        )
        return [ModelVersion.from_row(r) for r in rows]

    async def head_files_beyond(self, user_id: int, keep: int) -> list[str]:
        """File paths of the person's head versions other than the active one and the
        ``keep`` newest others (whose files are kept for rollback)."""
        rows = await self.db.fetch_all(
            "SELECT file_path FROM model_versions"
            " WHERE owner_user_id = ? AND kind = 'head' AND status != 'active'"
            " ORDER BY version DESC LIMIT -1 OFFSET ?",
            (user_id, keep),
        )
        return [str(r[0]) for r in rows]

    async def next_model_version(self, user_id: int | None, kind: str = "head") -> int:
        """1 + the newest version of this owner's models of `kind` (None = global models)."""
        row = await self.db.fetch_one(
            "SELECT IFNULL(MAX(version), 0) + 1 FROM model_versions"
            " WHERE owner_user_id IS ? AND kind = ?",
            (user_id, kind),
        )
        return int(row[0]) if row else 1

    async def add_model_version(self, model: NewModel, *, promote: bool) -> ModelVersion:
        """Record a trained model; if `promote`, it becomes active and the owner's active one
        of that kind is retired, atomically. Otherwise it is recorded as rejected."""
        async with self.db.transaction() as conn:
            if promote:
                await conn.execute(
                    "UPDATE model_versions SET status = 'retired'"
                    " WHERE owner_user_id IS ? AND kind = ? AND status = 'active'",
                    (model.owner_user_id, model.kind),
                )
            return await _insert_model(conn, model, "active" if promote else "rejected")

    async def activate_model_version(self, user_id: int, version: int, kind: str = "head") -> bool:
        """Roll back (or forward): make `version` the active one, retiring the current one."""
        async with self.db.transaction() as conn:
            async with conn.execute(
                "SELECT id FROM model_versions WHERE owner_user_id = ? AND kind = ? AND version = ?",
                (user_id, kind, version),
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                return False
            await conn.execute(
                "UPDATE model_versions SET status = 'retired'"
                " WHERE owner_user_id = ? AND kind = ? AND status = 'active'",
                (user_id, kind),
            )
            await conn.execute(
                "UPDATE model_versions SET status = 'active' WHERE id = ?", (int(row[0]),)
            )
        return True

    # -- a person's data -----------------------------------------------------

    async def find_user(self, platform: str, platform_user_id: str) -> User | None:
        row = await self.db.fetch_one(
            "SELECT id FROM users WHERE platform = ? AND platform_user_id = ?",
            (platform, platform_user_id),
        )
        return None if row is None else User(int(row[0]), platform, platform_user_id)

    async def vote_history(self, user_id: int) -> list[tuple[str, Vote]]:
        """(time, vote) of every current vote, oldest first, for the learning-curve chart."""
        rows = await self.db.fetch_all(
            "SELECT created_at, vote FROM feedback WHERE user_id = ? ORDER BY created_at",
            (user_id,),
        )
        return [(r[0], Vote(r[1])) for r in rows]

    async def export_rows(self, user_id: int) -> list[dict[str, object]]:
        """Everything a person sent and said, one row per submission."""
        rows = await self.db.fetch_all(
            "SELECT i.sha256, s.caption, f.vote, s.score, m.version AS model_version,"
            " s.created_at AS submitted_at, f.updated_at AS voted_at"
            " FROM submissions s JOIN images i ON i.id = s.image_id"
            " LEFT JOIN feedback f ON f.submission_id = s.id AND f.user_id = s.user_id"
            " LEFT JOIN model_versions m ON m.id = s.model_version_id"
            " WHERE s.user_id = ? ORDER BY s.id",
            (user_id,),
        )
        return [dict(r) for r in rows]

    async def forget_user(self, user_id: int) -> ForgetReport:
        """Delete the person and everything of theirs, in one transaction. Images another
        person also sent stay (they are that person's too); other people's votes on this
        person's submissions (in a group) go with them. The caller deletes the files."""
        async with self.db.transaction() as conn:

            async def scalar_list(sql: str) -> list[Any]:
                async with conn.execute(sql, (user_id,)) as cur:
                    return [r[0] for r in await cur.fetchall()]

            model_files = await scalar_list(
                "SELECT file_path FROM model_versions WHERE owner_user_id = ?"
            )
            image_ids = await scalar_list(
                "SELECT DISTINCT image_id FROM submissions WHERE user_id = ?"
            )
            [submissions] = await scalar_list("SELECT COUNT(*) FROM submissions WHERE user_id = ?")
            [votes] = await scalar_list("SELECT COUNT(*) FROM feedback WHERE user_id = ?")
            async with conn.execute(
                "SELECT DISTINCT f.user_id, s.image_id FROM feedback f"
                " JOIN submissions s ON s.id = f.submission_id"
                " WHERE s.user_id = ?1 AND f.user_id != ?1",
                (user_id,),
            ) as cur:
                others_votes = [(int(r[0]), int(r[1])) for r in await cur.fetchall()]
            await conn.execute("DELETE FROM users WHERE id = ?", (user_id,))  # cascades
            image_files: list[str] = []
            deleted_images = 0
            for image_id in image_ids:
                async with conn.execute(
                    "DELETE FROM images WHERE id = ? AND NOT EXISTS"
                    " (SELECT 1 FROM submissions WHERE image_id = images.id) RETURNING file_path",
                    (image_id,),
                ) as cur:
                    gone = await cur.fetchone()
                if gone is not None:
                    deleted_images += 1
                    if gone[0]:
                        image_files.append(str(gone[0]))
        return ForgetReport(
            submissions=int(submissions),
            votes=int(votes),
            models=len(model_files),
            images=deleted_images,
            files=[str(f) for f in model_files] + image_files,
            others_votes=others_votes,
        )

    # -- backbone fine-tuning ------------------------------------------------

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
        row = await self.db.fetch_one("SELECT IFNULL(MAX(revision), 0) FROM feedback")
        return int(row[0]) if row else 0

    async def votes_after(self, revision: int) -> int:
        row = await self.db.fetch_one(
            "SELECT COUNT(*) FROM feedback WHERE revision > ?", (revision,)
        )
        return int(row[0]) if row else 0

    async def retained_images(self) -> list[tuple[int, str]]:
        """(image_id, file path) of every image whose file is kept."""
        rows = await self.db.fetch_all(
            "SELECT id, file_path FROM images WHERE file_path IS NOT NULL ORDER BY id"
        )
        return [(int(r[0]), str(r[1])) for r in rows]

    async def put_embeddings(
        self, encoder_version: str, vectors: Sequence[tuple[int, bytes]], dim: int
    ) -> None:
        async with self.db.transaction() as conn:
            await conn.executemany(
                "INSERT OR REPLACE INTO embeddings (image_id, encoder_version, kind, dim, vector)"
                " VALUES (?, ?, 'image', ?, ?)",
                [(image_id, encoder_version, dim, vector) for image_id, vector in vectors],
            )

    async def retained_images_missing(self, have: str, lack: str) -> list[tuple[int, str]]:
        """(image_id, file path) of kept images with an embedding by encoder ``have`` and
        none by ``lack``: those sent while a fine-tune was re-embedding the others."""
        rows = await self.db.fetch_all(
            "SELECT i.id, i.file_path FROM images i WHERE i.file_path IS NOT NULL"
            " AND EXISTS (SELECT 1 FROM embeddings e WHERE e.image_id = i.id"
            "  AND e.encoder_version = ? AND e.kind = 'image')"
            " AND NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.image_id = i.id"
            "  AND e.encoder_version = ? AND e.kind = 'image')"
            " ORDER BY i.id",
            (have, lack),
        )
        return [(int(r[0]), str(r[1])) for r in rows]

    async def drop_embeddings_except(self, encoder_versions: Collection[str]) -> int:
        """Drop every image embedding made by none of ``encoder_versions``."""
        keep = sorted(encoder_versions)
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                f"DELETE FROM embeddings WHERE encoder_version NOT IN ({','.join('?' * len(keep))})",
                keep,
            )
            return cur.rowcount

    async def drop_embeddings(self, encoder_version: str) -> int:
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "DELETE FROM embeddings WHERE encoder_version = ?", (encoder_version,)
            )
            return cur.rowcount

    async def active_backbone(self) -> ModelVersion | None:
        row = await self.db.fetch_one(
            "SELECT * FROM model_versions"
            " WHERE owner_user_id IS NULL AND kind = 'backbone' AND status = 'active'"
        )
        return None if row is None else ModelVersion.from_row(row)

    async def last_backbone(self) -> ModelVersion | None:
        """The newest backbone row of any status: new votes are counted from it."""
        row = await self.db.fetch_one(
            "SELECT * FROM model_versions WHERE owner_user_id IS NULL AND kind = 'backbone'"
            " ORDER BY version DESC LIMIT 1"
        )
        return None if row is None else ModelVersion.from_row(row)

    async def add_backbone_version(
        self, backbone: NewModel, *, promote: bool, heads: Sequence[NewModel] = ()
    ) -> ModelVersion:
        """Record a fine-tuned encoder; if `promote`, it and its people's new heads become
        active (and the ones they replace retired) in one transaction."""
        async with self.db.transaction() as conn:
            if promote:
                for model in (backbone, *heads):
                    await conn.execute(
                        "UPDATE model_versions SET status = 'retired'"
                        " WHERE owner_user_id IS ? AND kind = ? AND status = 'active'",
                        (model.owner_user_id, model.kind),
                    )
                for head in heads:
                    await _insert_model(conn, head, "active")
            return await _insert_model(conn, backbone, "active" if promote else "rejected")

    # -- training runs -------------------------------------------------------

    async def start_training_run(self, user_id: int | None, kind: str, trigger: str) -> int:
        async with (
            self.db.transaction() as conn,
            conn.execute(
                "INSERT INTO training_runs (user_id, kind, trigger) VALUES (?, ?, ?) RETURNING id",
                (user_id, kind, trigger),
            ) as cur,
        ):
            row = await cur.fetchone()
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
            " finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?",
            (outcome, n_labels, model_version_id, detail, run_id),
        )

    async def fail_abandoned_runs(self) -> int:
        """At start-up: a run still 'running' belongs to a process that died."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "UPDATE training_runs SET outcome = 'failed',"
                " detail = 'abandoned: the bot stopped while it ran',"
                " finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE outcome = 'running'"
            )
            return cur.rowcount


async def _insert_model(conn: aiosqlite.Connection, model: NewModel, status: str) -> ModelVersion:
    async with conn.execute(
        "INSERT INTO model_versions (owner_user_id, kind, version, parent_id, file_path,"
        " encoder_version, train_size, holdout_size, metrics_json, trained_through, status)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
        (
            model.owner_user_id,
            model.kind,
            model.version,
            model.parent_id,
            model.file_path,
            model.encoder_version,
            model.train_size,
            model.holdout_size,
            json.dumps(model.metrics),
            model.trained_through,
            status,
        ),
    ) as cur:
        row = await cur.fetchone()
    assert row is not None
    return ModelVersion.from_row(row)
