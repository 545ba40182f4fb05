"""Submissions: a person sent an image; its caption text and reply."""

from __future__ import annotations

from collections.abc import Sequence

from domain.records import (
    Submission,
)
from storage.db import Database
from storage.rows import (
    SUBMISSION_COLUMNS,
    submission_from_row,
)


class SubmissionStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def find_submission(
        self, user_id: int, chat_id: str, message_id: str
    ) -> Submission | None:
        row = await self.db.fetch_one(
            f"SELECT {SUBMISSION_COLUMNS} FROM submissions"
            " WHERE user_id = ? AND chat_id = ? AND message_id = ?",
            (user_id, chat_id, message_id),
        )
        return None if row is None else submission_from_row(row)

    async def get_submission(self, submission_id: int) -> Submission | None:
        row = await self.db.fetch_one(
            f"SELECT {SUBMISSION_COLUMNS} FROM submissions WHERE id = ?", (submission_id,)
        )
        return None if row is None else submission_from_row(row)

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
                " ON CONFLICT (sha256) DO UPDATE SET file_path = COALESCE(images.file_path, excluded.file_path)",
                (sha256, byte_size, width, height, image_format, file_path),
            )
            image_row = await conn.fetch_one("SELECT id FROM images WHERE sha256 = ?", (sha256,))
            assert image_row is not None
            image_id = int(image_row[0])
            await conn.execute(
                "INSERT INTO embeddings (image_id, encoder_version, kind, dim, vector)"
                " VALUES (?, ?, 'image', ?, ?) ON CONFLICT DO NOTHING",
                (image_id, encoder_version, dim, vector),
            )
            await conn.execute(
                "INSERT INTO submissions"
                " (user_id, image_id, chat_id, message_id, caption, score, model_version_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (user_id, image_id, chat_id, message_id, caption, score, model_version_id),
            )
            row = await conn.fetch_one(
                f"SELECT {SUBMISSION_COLUMNS} FROM submissions"
                " WHERE user_id = ? AND chat_id = ? AND message_id = ?",
                (user_id, chat_id, message_id),
            )
        assert row is not None
        return submission_from_row(row)

    async def put_submission_text(
        self, submission_id: int, encoder_version: str, text: str, vector: bytes
    ) -> None:
        await self.db.execute(
            "INSERT INTO submission_texts (submission_id, encoder_version, text, vector)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (submission_id, encoder_version)"
            " DO UPDATE SET text = excluded.text, vector = excluded.vector",
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
