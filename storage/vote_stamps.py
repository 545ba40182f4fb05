"""What a person's FAISS indexes were built from, as the database says now.

Several workers share one database but each keeps its own FAISS indexes: a vote stored by
another worker reaches this one's indexes when the person's stamp (how many votes they
have, and the newest revision among them) differs from the stamp the index was built at.
Any insert, change or deletion of a vote changes one of the two: revisions only grow.
"""

from __future__ import annotations

from collections.abc import Iterable

from storage.db import Database

Stamp = tuple[int, int]  # (number of votes, newest revision)


class VoteStampStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def stamp(self, user_id: int) -> Stamp:
        """One indexed query (feedback_by_user_revision covers it)."""
        row = await self.db.fetch_one(
            "SELECT COUNT(*), COALESCE(MAX(revision), 0) FROM feedback WHERE user_id = ?",
            (user_id,),
        )
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    async def voted_image_ids(self, user_id: int, *, liked: bool) -> set[int]:
        """The images this person liked (or disliked): ids only, to diff an index cheaply."""
        rows = await self.db.fetch_all(
            "SELECT DISTINCT s.image_id FROM feedback f"
            " JOIN submissions s ON s.id = f.submission_id"
            f" WHERE f.user_id = ? AND f.vote {'!=' if liked else '='} 'dislike'",
            (user_id,),
        )
        return {int(r[0]) for r in rows}

    async def image_vectors(
        self, image_ids: Iterable[int], encoder_version: str
    ) -> dict[int, bytes]:
        """image id → stored vector of the images among ``image_ids`` embedded by the encoder."""
        wanted = sorted(set(image_ids))
        found: dict[int, bytes] = {}
        for start in range(0, len(wanted), 500):  # under every backend's parameter limit
            chunk = wanted[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            rows = await self.db.fetch_all(
                "SELECT image_id, vector FROM embeddings WHERE encoder_version = ?"
                f" AND kind = 'image' AND image_id IN ({marks})",
                (encoder_version, *chunk),
            )
            found.update({int(r[0]): r[1] for r in rows})
        return found
