"""Per-person FAISS indexes of liked-image embeddings.

They are a cache of the `embeddings` and `feedback` tables: `sync` checks a
person's index against the ids SQLite says they liked and rebuilds it when the
file is missing, unreadable or stale. Files are written atomically (temp file +
`os.replace`) by `flush`, so a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Neighbour:
    image_id: int
    similarity: float


class _PersonIndex:
    def __init__(self, dim: int) -> None:
        # Inner product over L2-normalised vectors is cosine similarity;
        # IDMap2 keeps our image ids and supports remove_ids.
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.ids: set[int] = set()  # FAISS accepts duplicate ids; we must not add twice
        self.dirty = False

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), ids.astype(np.int64))
            self.ids.update(int(i) for i in ids)
            self.dirty = True


class LikedIndex:
    def __init__(self, directory: Path, dim: int) -> None:
        self.directory = directory
        self.dim = dim
        self._people: dict[int, _PersonIndex] = {}
        # FAISS calls run in worker threads as well as on the event loop.
        self._lock = threading.Lock()

    def _path(self, user_id: int) -> Path:
        return self.directory / f"liked-{user_id}.faiss"

    def sync(self, user_id: int, liked: Mapping[int, bytes]) -> bool:
        """Make `user_id`'s index hold exactly `liked` (image_id → float32 bytes).

        Loads the file when it matches, rebuilds otherwise. Returns True if rebuilt.
        """
        wanted = set(liked)
        loaded = self._load(user_id)
        with self._lock:
            if loaded is not None and loaded.ids == wanted:
                self._people[user_id] = loaded
                return False
            person = _PersonIndex(self.dim)
            if liked:
                ids = np.fromiter(liked.keys(), dtype=np.int64, count=len(liked))
                vectors = np.stack([np.frombuffer(liked[int(i)], np.float32) for i in ids])
                person.add(ids, vectors)
            person.dirty = True
            self._people[user_id] = person
            return True

    def _load(self, user_id: int) -> _PersonIndex | None:
        path = self._path(user_id)
        if not path.exists():
            return None
        try:
            index = faiss.read_index(str(path))
        except RuntimeError:
            log.warning("unreadable FAISS index %s; rebuilding it", path)
            return None
        # read_index already returns the concrete class, and it owns the memory
        # (a downcast_index() wrapper would not: the index could be freed under it).
        if not isinstance(index, faiss.IndexIDMap2) or index.d != self.dim:
            return None
        person = _PersonIndex(self.dim)
        person.index = index
        person.ids = {int(i) for i in faiss.vector_to_array(person.index.id_map)}
        return person

    def add(self, user_id: int, image_id: int, vector: np.ndarray) -> None:
        with self._lock:
            person = self._people.setdefault(user_id, _PersonIndex(self.dim))
            if image_id not in person.ids:
                person.add(np.array([image_id], np.int64), vector.reshape(1, -1))

    def remove(self, user_id: int, image_id: int) -> None:
        with self._lock:
            person = self._people.get(user_id)
            if person is not None and image_id in person.ids:
                # The SWIG wrapper accepts an id array in place of an IDSelector.
                person.index.remove_ids(np.array([image_id], np.int64))  # type: ignore[arg-type]
                person.ids.discard(image_id)
                person.dirty = True

    def count(self, user_id: int) -> int:
        with self._lock:
            person = self._people.get(user_id)
            return 0 if person is None else int(person.index.ntotal)

    def forget(self, user_id: int) -> None:
        with self._lock:
            self._people.pop(user_id, None)
            self._path(user_id).unlink(missing_ok=True)

    def search(
        self, user_id: int, query: np.ndarray, k: int, *, exclude_image_id: int | None = None
    ) -> list[Neighbour]:
        """The k most similar liked images, most similar first."""
        with self._lock:
            person = self._people.get(user_id)
            if person is None or person.index.ntotal == 0:
                return []
            n = min(k + (exclude_image_id is not None), int(person.index.ntotal))
            sims, ids = person.index.search(
                np.ascontiguousarray(query.reshape(1, -1), np.float32), n
            )
        found = [
            Neighbour(int(i), float(s))
            for s, i in zip(sims[0], ids[0], strict=True)
            if i != -1 and i != exclude_image_id
        ]
        return found[:k]

    def flush(self) -> int:
        """Write every changed index to disk atomically; returns how many were written."""
        self.directory.mkdir(parents=True, exist_ok=True)
        written = 0
        with self._lock:
            for user_id, person in self._people.items():
                if not person.dirty:
                    continue
                path = self._path(user_id)
                tmp = path.with_suffix(".tmp")
                faiss.write_index(person.index, str(tmp))
                os.replace(tmp, path)
                person.dirty = False
                written += 1
        return written


def index_directory(root: Path, encoder_version: str) -> Path:
    """One folder per encoder version: vectors of different encoders never mix."""
    return root / re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder_version)
