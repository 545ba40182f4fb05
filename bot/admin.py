"""What admins may see and do: everyone's summaries, a person's models, rollback."""

from __future__ import annotations

import asyncio

from bot.active_heads import ActiveHeads
from domain import ModelList, Rollback, Totals, UserSummary
from storage.files import DataDir
from storage.store import Store


class AdminService:
    def __init__(
        self,
        *,
        store: Store,
        data_dir: DataDir,
        heads: ActiveHeads,
        training_lock: asyncio.Lock,
    ) -> None:
        self.store = store
        self.data_dir = data_dir
        self.heads = heads
        self.training_lock = training_lock  # a rollback must not interleave with a retrain

    async def summaries(self) -> tuple[Totals, list[UserSummary]]:
        return await self.store.people.totals(), await self.store.people.user_summaries()

    async def models_of(self, platform: str, platform_user_id: str) -> ModelList | None:
        user = await self.store.people.find_user(platform, platform_user_id)
        if user is None:
            return None
        versions = await self.store.models.model_versions(user.id)
        removed = frozenset(
            m.version for m in versions if not self.data_dir.path(m.file_path).exists()
        )
        other_encoder = frozenset(
            m.version for m in versions if m.encoder_version != self.heads.encoder_version
        )
        return ModelList(versions, removed, other_encoder)

    async def rollback(self, platform: str, platform_user_id: str, version: int) -> Rollback:
        user = await self.store.people.find_user(platform, platform_user_id)
        if user is None:
            return Rollback.UNKNOWN_USER
        async with self.training_lock:
            versions = await self.store.models.model_versions(user.id)
            model = next((m for m in versions if m.version == version), None)
            if model is None:
                return Rollback.NO_SUCH_VERSION
            if model.encoder_version != self.heads.encoder_version:
                # Its encoder's embeddings are gone: it would never score (the person would
                # get the cold-start prior while /stats named this version).
                return Rollback.OTHER_ENCODER
            if not self.data_dir.path(model.file_path).exists():
                return Rollback.FILE_REMOVED
            # Read now, not at the next image: an unreadable file (logged) would leave the
            # person on the cold-start prior while /stats names this version.
            if await self.heads.load(model) is None:
                return Rollback.UNREADABLE
            await self.store.models.activate_model_version(user.id, version)
            return Rollback.DONE
