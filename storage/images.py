"""Images and their embeddings, per encoder version."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from storage.db import Database


class ImageStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def find_embedding(self, sha256: str, encoder_version: str) -> tuple[int, bytes] | None:
        """(image_id, vector) if this content was already embedded by this encoder."""
        row = await self.db.fetch_one(
            "SELECT i.id, e.vector FROM images i JOIN embeddings e ON e.image_id = i.id"
            " WHERE i.sha256 = ? AND e.encoder_version = ? AND e.kind = 'image'",
            (sha256, encoder_version),
        )
        return None if row is None else (int(row[0]), bytes(row[1]))

    async def find_embedding_by_image(self, image_id: int, encoder_version: str) -> bytes | None:
        row = await self.db.fetch_one(
            "SELECT vector FROM embeddings WHERE image_id = ? AND encoder_version = ? AND kind = 'image'",
            (image_id, encoder_version),
        )
        return None if row is None else bytes(row[0])

    async def image_file(self, image_id: int) -> str | None:
        row = await self.db.fetch_one("SELECT file_path FROM images WHERE id = ?", (image_id,))
        return None if row is None else row[0]

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
                "INSERT INTO embeddings (image_id, encoder_version, kind, dim, vector)"
                " VALUES (?, ?, 'image', ?, ?) ON CONFLICT (image_id, encoder_version, kind)"
                " DO UPDATE SET dim = excluded.dim, vector = excluded.vector",
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
