"""Model versions: heads per person and CLIP backbones, and which is active."""

from __future__ import annotations

from collections.abc import Sequence

from domain.records import (
    ModelVersion,
    NewModel,
)
from storage.db import Database
from storage.rows import (
    insert_model,
    model_version_from_row,
)


class ModelStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def active_model(self, user_id: int, kind: str = "head") -> ModelVersion | None:
        row = await self.db.fetch_one(
            "SELECT * FROM model_versions WHERE owner_user_id = ? AND kind = ? AND status = 'active'",
            (user_id, kind),
        )
        return None if row is None else model_version_from_row(row)

    async def model_versions(self, user_id: int, kind: str = "head") -> list[ModelVersion]:
        rows = await self.db.fetch_all(
            "SELECT * FROM model_versions WHERE owner_user_id = ? AND kind = ? ORDER BY version",
            (user_id, kind),
        )
        return [model_version_from_row(r) for r in rows]

    async def head_files_beyond(self, user_id: int, keep: int) -> list[str]:
        """File paths of the person's head versions other than the active one and the
        ``keep`` newest others (whose files are kept for rollback)."""
        rows = await self.db.fetch_all(
            "SELECT file_path FROM model_versions"
            " WHERE owner_user_id = ? AND kind = 'head' AND status != 'active'"
            " ORDER BY version DESC",
            (user_id,),
        )
        return [str(r[0]) for r in rows[keep:]]

    async def next_model_version(self, user_id: int | None, kind: str = "head") -> int:
        """1 + the newest version of this owner's models of `kind` (None = global models)."""
        row = await self.db.fetch_one(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM model_versions"
            " WHERE owner_user_id IS NOT DISTINCT FROM ? AND kind = ?",
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
                    " WHERE owner_user_id IS NOT DISTINCT FROM ? AND kind = ? AND status = 'active'",
                    (model.owner_user_id, model.kind),
                )
            return await insert_model(conn, model, "active" if promote else "rejected")

    async def activate_model_version(self, user_id: int, version: int, kind: str = "head") -> bool:
        """Roll back (or forward): make `version` the active one, retiring the current one."""
        async with self.db.transaction() as conn:
            row = await conn.fetch_one(
                "SELECT id FROM model_versions WHERE owner_user_id = ? AND kind = ? AND version = ?",
                (user_id, kind, version),
            )
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

    async def active_global(self, kind: str) -> ModelVersion | None:
        """The active model everyone shares of ``kind``: 'backbone' or 'crowd'."""
        row = await self.db.fetch_one(
            "SELECT * FROM model_versions"
            " WHERE owner_user_id IS NULL AND kind = ? AND status = 'active'",
            (kind,),
        )
        return None if row is None else model_version_from_row(row)

    async def last_global(self, kind: str) -> ModelVersion | None:
        """The newest shared model of ``kind``, of any status: new votes are counted from it."""
        row = await self.db.fetch_one(
            "SELECT * FROM model_versions WHERE owner_user_id IS NULL AND kind = ?"
            " ORDER BY version DESC LIMIT 1",
            (kind,),
        )
        return None if row is None else model_version_from_row(row)

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
                        " WHERE owner_user_id IS NOT DISTINCT FROM ? AND kind = ? AND status = 'active'",
                        (model.owner_user_id, model.kind),
                    )
                for head in heads:
                    await insert_model(conn, head, "active")
            return await insert_model(conn, backbone, "active" if promote else "rejected")
