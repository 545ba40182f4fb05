"""Each person's active head: found in the database, read from its file once, kept in
memory for the people who sent something most recently, and turned into a scorer."""

from __future__ import annotations

import asyncio
import logging
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bot.crowd import SharedCrowd
from bot.head_cache import HeadCache
from domain import ModelVersion, User
from learner.head import TasteHead, train_head
from learner.prior import nearest_vote_scores
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
        crowd: SharedCrowd,
    ) -> None:
        self.store = store
        self.data_dir = data_dir
        self.encoder_version = encoder_version
        self.dim = dim
        self.text_weight = text_weight
        self.files_kept = files_kept
        self.crowd = crowd
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

    async def scorer(self, user: User) -> tuple[Scorer, ModelVersion | None, bool]:
        """What scores a vector for ``user``: their active head, else a prior from the votes
        they have (with the crowd model when there is one). Also the model version to name
        beside the score (None for a prior), and whether the crowd model is that prior."""
        await self.crowd.refresh()  # one another process promoted
        active, head = await self.active_head(user.id)
        if head is None:
            head = await self._prior(user.id)
            active = None
        if head is None:
            return _cold_start(*await self._votes(user.id)), None, False
        weight = self.text_weight

        def with_head(vector: np.ndarray, text_vector: np.ndarray | None) -> float:
            seen = combine(vector, text_vector, weight)
            return float(head.predict(seen.reshape(1, -1))[0])

        return with_head, active, active is None

    async def _votes(self, user_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        votes = await self.store.votes.labelled_embeddings(user_id, self.encoder_version)
        rows = [np.frombuffer(v.vector, np.float32) for v in votes]
        x = np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)
        liked = np.array([v.vote.liked for v in votes], bool)
        weights = np.array([v.vote.weight for v in votes], np.float64)
        return x, liked, weights

    async def _prior(self, user_id: int) -> TasteHead | None:
        """Before a person's first head, with a crowd model: a head of their few votes with
        the crowd as its prior (the learner uses the crowd alone until there is a boundary
        to learn). None without a crowd model."""
        crowd = self.crowd.model
        if crowd is None:
            return None
        x, liked, weights = await self._votes(user_id)
        return await asyncio.to_thread(train_head, x, liked, weights, None, crowd)

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


def _cold_start(x: np.ndarray, liked: np.ndarray, _: np.ndarray) -> Scorer:
    """The prior of the person's own votes, with no crowd model to start from: it leans the
    way the reply's "closest liked / disliked" lines do (learner.prior)."""
    liked_rows, disliked_rows = x[liked], x[~liked]

    def with_prior(vector: np.ndarray, text_vector: np.ndarray | None) -> float:
        return float(nearest_vote_scores(vector.reshape(1, -1), liked_rows, disliked_rows)[0])

    return with_prior


def _unlink_all(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
