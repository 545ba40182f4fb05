"""A person's view of their own data: stats, learning curve, export, and forgetting it all."""

from __future__ import annotations

import asyncio
import json
import shutil

from bot.active_heads import ActiveHeads
from bot.vote_indexes import VoteIndexes
from domain import Export, ForgetReport, LearningCurve, Person, Stats
from storage.files import DataDir
from storage.store import Store


class PeopleService:
    def __init__(
        self,
        *,
        store: Store,
        data_dir: DataDir,
        indexes: VoteIndexes,
        heads: ActiveHeads,
        training_lock: asyncio.Lock,
    ) -> None:
        self.store = store
        self.data_dir = data_dir
        self.indexes = indexes
        self.heads = heads
        self.training_lock = training_lock  # shared with retraining: forget waits for it

    async def stats(self, person: Person, *, include_totals: bool) -> Stats:
        user = await self.store.people.user_of(person)
        return Stats(
            counts=await self.store.people.user_counts(user.id),
            active=await self.store.models.active_model(user.id),
            totals=await self.store.people.totals() if include_totals else None,
        )

    async def learning_curve(self, person: Person) -> LearningCurve:
        user = await self.store.people.user_of(person)
        return LearningCurve(
            versions=await self.store.models.model_versions(user.id),
            votes=await self.store.votes.vote_history(user.id),
        )

    async def export(self, person: Person) -> Export:
        """Every image the person sent, with its vote and score, as a JSON file."""
        user = await self.store.people.find_user(person.platform, person.platform_user_id)
        rows = [] if user is None else await self.store.people.export_rows(user.id)
        data = json.dumps({"submissions": rows}, ensure_ascii=False, indent=1).encode()
        return Export(len(rows), data)

    async def forget(self, person: Person) -> ForgetReport | None:
        """Delete everything of the person's: rows, files, FAISS vectors, cached heads."""
        user = await self.store.people.find_user(person.platform, person.platform_user_id)
        if user is None:
            return None
        async with self.training_lock:  # not while one of their models is being trained
            report = await self.store.people.forget_user(user.id)
            self.indexes.forget(user.id)
            for relpath in report.files:
                self.data_dir.path(relpath).unlink(missing_ok=True)
            # The whole folder: a head file no row names (a crash between writing it and
            # recording it) holds their images' vectors too, and user ids can be reused.
            heads = self.data_dir.path(self.data_dir.heads_relpath(user.id))
            await asyncio.to_thread(shutil.rmtree, heads, True)
            for other_id, image_id in report.others_votes:  # their votes on its group images
                await self.indexes.reindex_image(other_id, image_id)
        self.heads.forget(user.id)
        return report
