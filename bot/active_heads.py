"""Each person's active head: found in the database, read from its file once, kept in
memory for the people who sent something most recently, and turned into a scorer."""

from __future__ import annotations

import asyncio
import logging
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bot.head_cache import HeadCache
from domain import ModelVersion, User
from learner.head import TasteHead, cold_start_scores
from learner.text import combine
from storage.files import DataDir
from storage.store import Store

log = logging.getLogger(__name__)

# (image vector, text vector or None) -> the probability the person likes it
Scorer = Callable[[np.ndarray, np.ndarray | None], float]


class ActiveHeads:
    def __init__(
        self,
        store: Store,
        data_dir: DataDir,
        *,
        encoder_version: str,
        dim: int,
        text_weight: float,
        cache_people: int,
        files_kept: int,
    ) -> None:
        self.store = store
        self.data_dir = data_dir
        self.encoder_version = encoder_version
        self.dim = dim
        self.text_weight = text_weight
        self.files_kept = files_kept
        self.cache = HeadCache(cache_people)

    def switch(self, encoder_version: str, dim: int) -> None:
        """Heads of the previous encoder cannot score the new one's vectors."""
        self.encoder_version, self.dim = encoder_version, dim
        self.cache.clear()

    async def load(self, model: ModelVersion) -> TasteHead | None:
        """The model's head, or None (logged) when its file is missing or unreadable: the
        person is then scored by the cold-start prior and their next retrain replaces it."""
        assert model.owner_user_id is not None, "heads belong to a person"
        head = self.cache.get(model.owner_user_id, model.id)
        if head is None:
            path = self.data_dir.path(model.file_path)
            try:
                head = await asyncio.get_running_loop().run_in_executor(None, TasteHead.load, path)
            except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile):
                log.exception("cannot read the head file of model %d (%s)", model.id, path)
                return None
            self.cache.put(model.owner_user_id, model.id, head)
        return head

    async def active_head(self, user_id: int) -> tuple[ModelVersion | None, TasteHead | None]:
        """The person's active model and its head, if it scores the served encoder."""
        active = await self.store.models.active_model(user_id)
        if active is None or active.encoder_version != self.encoder_version:
            return active, None
        return active, await self.load(active)

    async def scorer(self, user: User) -> tuple[Scorer, ModelVersion | None]:
        """What scores a vector for ``user`` (their active head, else the cold-start prior),
        and the model version to name beside the score (None for the prior)."""
        active, head = await self.active_head(user.id)
        if head is not None:
            weight = self.text_weight

            def with_head(vector: np.ndarray, text_vector: np.ndarray | None) -> float:
                seen = combine(vector, text_vector, weight)
                return float(head.predict(seen.reshape(1, -1))[0])

            return with_head, active
        votes = await self.store.votes.labelled_embeddings(user.id, self.encoder_version)
        empty = np.zeros((0, self.dim), np.float32)
        liked = [np.frombuffer(v.vector, np.float32) for v in votes if v.vote.liked]
        disliked = [np.frombuffer(v.vector, np.float32) for v in votes if not v.vote.liked]
        liked_rows = np.stack(liked) if liked else empty
        disliked_rows = np.stack(disliked) if disliked else empty

        def with_prior(vector: np.ndarray, text_vector: np.ndarray | None) -> float:
            return float(cold_start_scores(vector.reshape(1, -1), liked_rows, disliked_rows)[0])

        return with_prior, None

    def promoted(self, user_id: int, model_id: int, head: TasteHead) -> None:
        self.cache.put(user_id, model_id, head)

    def forget(self, user_id: int) -> None:
        self.cache.forget(user_id)

    async def remove_old_files(self, user_id: int) -> None:
        """Keep the active head's file and the HEAD_FILES_KEPT newest others (for rollback):
        a person is retrained every few votes, and each file holds their images' vectors."""
        if self.files_kept == 0:
            return
        old = await self.store.models.head_files_beyond(user_id, self.files_kept)
        paths = [self.data_dir.path(rel) for rel in old]
        await asyncio.get_running_loop().run_in_executor(None, _unlink_all, paths)


def _unlink_all(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
