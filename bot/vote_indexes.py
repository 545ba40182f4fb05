"""Each person's liked and disliked images in FAISS, for the served encoder.

A cache of the votes table (the database is the source of truth): rebuilt where missing or
stale at start-up and at an encoder switch, kept in step with every vote change made here,
and, for votes other workers store, brought in step before a person's index is read
(`refresh`: one indexed query while nothing changed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from storage.store import Store
from storage.vectors import Neighbour, VoteIndex, index_directory
from storage.vote_stamps import Stamp


class VoteIndexes:
    def __init__(self, store: Store, faiss_root: Path, encoder_version: str, dim: int) -> None:
        self.store = store
        self.faiss_root = faiss_root
        self.encoder_version = encoder_version
        self.liked, self.disliked = self._pair(encoder_version, dim)
        # person -> the votes their indexes were last checked against (see refresh)
        self._stamps: dict[int, Stamp] = {}

    def _pair(self, encoder_version: str, dim: int) -> tuple[VoteIndex, VoteIndex]:
        directory = index_directory(self.faiss_root, encoder_version)
        return (
            VoteIndex(directory, dim, kind="liked"),
            VoteIndex(directory, dim, kind="disliked"),
        )

    async def sync(self) -> int:
        """Rebuild every person's index that is missing or stale; returns how many."""
        return await self._sync(self.liked, self.disliked, self.encoder_version)

    async def _sync(self, liked: VoteIndex, disliked: VoteIndex, encoder_version: str) -> int:
        rebuilt = 0
        for user_id in await self.store.votes.users_with_votes():
            for index, is_liked in ((liked, True), (disliked, False)):
                vectors = await self.store.votes.voted_image_vectors(
                    user_id, encoder_version, liked=is_liked
                )
                rebuilt += index.sync(user_id, vectors)
        liked.flush()
        disliked.flush()
        return rebuilt

    async def switch(self, encoder_version: str, dim: int) -> None:
        """Serve another encoder's indexes, brought in step with the votes first."""
        liked, disliked = self._pair(encoder_version, dim)
        await self._sync(liked, disliked, encoder_version)
        self.liked, self.disliked, self.encoder_version = liked, disliked, encoder_version
        self._stamps.clear()

    async def refresh(self, user_id: int) -> bool:
        """Bring the person's indexes in step with the database if another process changed
        their votes since the last check; True if anything was added or removed. Their
        stamp is read first, so a vote stored meanwhile is seen again at the next check."""
        stamp = await self.store.stamps.stamp(user_id)
        if self._stamps.get(user_id) == stamp:
            return False
        changed = False
        for index, liked in ((self.liked, True), (self.disliked, False)):
            changed |= await self._refresh_one(index, user_id, liked=liked)
        self._stamps[user_id] = stamp
        return changed

    async def _refresh_one(self, index: VoteIndex, user_id: int, *, liked: bool) -> bool:
        wanted = await self.store.stamps.voted_image_ids(user_id, liked=liked)
        have = index.ids_of(user_id)
        if have is None:  # not loaded here yet: build it whole (an IVF when large)
            vectors = await self.store.stamps.image_vectors(wanted, self.encoder_version)
            index.sync(user_id, vectors)
            return bool(vectors)
        for image_id in have - wanted:
            index.remove(user_id, image_id)
        new = await self.store.stamps.image_vectors(wanted - have, self.encoder_version)
        for image_id, blob in new.items():
            index.add(user_id, image_id, np.frombuffer(blob, np.float32))
        return bool(new) or bool(have - wanted)

    async def reindex_image(self, user_id: int, image_id: int) -> None:
        """Put the image in the liked and/or disliked index as this person's votes now say."""
        vector: np.ndarray | None = None
        for index, liked in ((self.liked, True), (self.disliked, False)):
            if await self.store.votes.image_has_vote(user_id, image_id, liked=liked):
                if vector is None:
                    stored = await self.store.images.find_embedding_by_image(
                        image_id, self.encoder_version
                    )
                    if stored is None:
                        return
                    vector = np.frombuffer(stored, np.float32)
                index.add(user_id, image_id, vector)
            else:
                index.remove(user_id, image_id)

    def nearest_liked(
        self, user_id: int, vector: np.ndarray, k: int, *, exclude_image_id: int | None = None
    ) -> list[Neighbour]:
        return self.liked.search(user_id, vector, k, exclude_image_id=exclude_image_id)

    def nearest_disliked(
        self, user_id: int, vector: np.ndarray, k: int, *, exclude_image_id: int | None = None
    ) -> list[Neighbour]:
        return self.disliked.search(user_id, vector, k, exclude_image_id=exclude_image_id)

    def forget(self, user_id: int) -> None:
        self._stamps.pop(user_id, None)
        self.liked.forget(user_id)
        self.disliked.forget(user_id)

    def flush(self) -> None:
        self.liked.flush()
        self.disliked.flush()
