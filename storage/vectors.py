"""Per-person FAISS indexes of the embeddings of images a person voted on (one index
for liked images, one for disliked: `kind`).

They are a cache of the `embeddings` and `feedback` tables: `sync` checks a
person's index against the ids SQLite says they liked and rebuilds it when the
file is missing, unreadable or stale. Files are written atomically (temp file +
`os.replace`) by `flush`, so a crash leaves either the old file or the new one.

Size: up to `FLAT_LIMIT` (4096) vectors a person's index is exact (`IndexFlatIP`,
~0.5 ms per query at 4k × 512 on one busy core). Above it, exhaustive search passes a
millisecond (~1 ms at 10k, 15-50 ms at 100k), so the index becomes an inverted file
(`IndexIVFFlat`, inner product, about √n lists, ~3000 vectors' worth of them searched per
query): under 1 ms at 100k, recall@10 ≈ 1.0 on clustered data (`python -m bench.speed
--faiss-only`). The switch happens when `sync` rebuilds a large index, or in a background
thread when `add` crosses the limit (searches use the flat index until the swap).
Searches use one OpenMP thread: a single query gains nothing from more, and on a busy CPU
OpenMP threads waiting for each other made a 5k-vector search 30x slower.
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

FLAT_LIMIT = 4_096  # vectors per person above which the index is an IVF (see module doc)


def _ivf_lists(n: int) -> int:
    """A power of two near √n, between 64 and 4096."""
    return int(min(4096, max(64, 2 ** round(np.log2(np.sqrt(max(n, 1)))))))


def _nprobe(nlist: int, n: int) -> int:
    """Lists to visit: about 3000 vectors' worth (~0.5 ms), at least 8."""
    return int(min(nlist, max(8, np.ceil(3000 * nlist / max(n, 1)))))


def _build_ivf(dim: int, ids: np.ndarray, vectors: np.ndarray) -> faiss.IndexIVFFlat:
    """An IVF index over ``vectors`` (trained on at most 64 per list), holding ``ids``."""
    nlist = _ivf_lists(len(ids))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.max_points_per_centroid = 64  # k-means on a sample: seconds, not a minute
    index.cp.min_points_per_centroid = 1
    vectors = np.ascontiguousarray(vectors, np.float32)
    index.train(vectors)
    index.add_with_ids(vectors, ids.astype(np.int64))
    index.nprobe = _nprobe(nlist, index.ntotal)
    return index


def _index_ids(index: faiss.IndexIDMap2 | faiss.IndexIVFFlat) -> set[int]:
    if isinstance(index, faiss.IndexIDMap2):
        return {int(i) for i in faiss.vector_to_array(index.id_map)}
    invlists = index.invlists
    assert invlists is not None
    ids: set[int] = set()
    for list_no in range(index.nlist):
        size = invlists.list_size(list_no)
        if size:
            ptr = invlists.get_ids(list_no)
            try:
                ids.update(int(i) for i in faiss.rev_swig_ptr(ptr, size))
            finally:
                invlists.release_ids(list_no, ptr)  # type: ignore[attr-defined]
    return ids


@dataclass(frozen=True)
class Neighbour:
    image_id: int
    similarity: float


class _PersonIndex:
    def __init__(self, dim: int) -> None:
        # Inner product over L2-normalised vectors is cosine similarity;
        # IDMap2 keeps our image ids and supports remove_ids.
        self.index: faiss.IndexIDMap2 | faiss.IndexIVFFlat = faiss.IndexIDMap2(
            faiss.IndexFlatIP(dim)
        )
        self.ids: set[int] = set()  # FAISS accepts duplicate ids; we must not add twice
        self.dirty = False
        self.upgrading: threading.Thread | None = None  # flat → IVF, in the background

    @property
    def is_flat(self) -> bool:
        return isinstance(self.index, faiss.IndexIDMap2)

    def vector(self, image_id: int) -> np.ndarray:
        assert self.is_flat, "only the flat index is read back"
        return np.asarray(self.index.reconstruct(image_id), np.float32)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), ids.astype(np.int64))
            self.ids.update(int(i) for i in ids)
            self.dirty = True


class VoteIndex:
    def __init__(
        self, directory: Path, dim: int, kind: str = "liked", *, flat_limit: int = FLAT_LIMIT
    ) -> None:
        self.directory = directory
        self.dim = dim
        self.flat_limit = flat_limit
        self.kind = kind
        self._people: dict[int, _PersonIndex] = {}
        # FAISS calls run in worker threads as well as on the event loop.
        self._lock = threading.Lock()

    def _path(self, user_id: int) -> Path:
        return self.directory / f"{self.kind}-{user_id}.faiss"

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
                if len(ids) > self.flat_limit:
                    person.index = _build_ivf(self.dim, ids, vectors)
                    person.ids = set(liked)
                else:
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
        if not isinstance(index, faiss.IndexIDMap2 | faiss.IndexIVFFlat) or index.d != self.dim:
            return None
        if isinstance(index, faiss.IndexIVFFlat):
            index.nprobe = _nprobe(index.nlist, index.ntotal)
        person = _PersonIndex(self.dim)
        person.index = index
        person.ids = _index_ids(index)
        return person

    def add(self, user_id: int, image_id: int, vector: np.ndarray) -> None:
        with self._lock:
            person = self._people.setdefault(user_id, _PersonIndex(self.dim))
            if image_id not in person.ids:
                person.add(np.array([image_id], np.int64), vector.reshape(1, -1))
                if person.is_flat and len(person.ids) > self.flat_limit and not person.upgrading:
                    self._start_upgrade(user_id, person)

    def _start_upgrade(self, user_id: int, person: _PersonIndex) -> None:
        """Build an IVF from a copy of the flat index on a thread, then swap it in."""
        ids = np.fromiter(person.ids, np.int64, len(person.ids))
        vectors = np.stack([person.vector(int(i)) for i in ids])
        person.upgrading = threading.Thread(
            target=self._finish_upgrade,
            args=(user_id, person, ids, vectors),
            name=f"faiss-ivf-{user_id}",
            daemon=True,
        )
        person.upgrading.start()

    def _finish_upgrade(
        self, user_id: int, person: _PersonIndex, ids: np.ndarray, vectors: np.ndarray
    ) -> None:
        try:
            ivf = _build_ivf(self.dim, ids, vectors)
        except Exception:
            log.exception("building the IVF index of user %d failed; it stays flat", user_id)
            return
        with self._lock:
            person.upgrading = None
            if self._people.get(user_id) is not person:
                return  # forgotten or rebuilt meanwhile
            built = {int(i) for i in ids}
            gone = built - person.ids
            new = sorted(person.ids - built)  # votes that came in while it was built
            if gone:
                ivf.remove_ids(np.fromiter(gone, np.int64, len(gone)))  # type: ignore[arg-type]
            if new:
                ivf.add_with_ids(np.stack([person.vector(i) for i in new]), np.array(new, np.int64))
            ivf.nprobe = _nprobe(ivf.nlist, ivf.ntotal)
            person.index = ivf
            person.dirty = True

    def wait_for_upgrades(self, timeout: float | None = None) -> None:
        """Block until background flat → IVF builds are done (tests, benchmarks)."""
        with self._lock:
            threads = [p.upgrading for p in self._people.values() if p.upgrading]
        for thread in threads:
            thread.join(timeout)

    def remove(self, user_id: int, image_id: int) -> None:
        with self._lock:
            person = self._people.get(user_id)
            if person is not None and image_id in person.ids:
                # The SWIG wrapper accepts an id array in place of an IDSelector.
                person.index.remove_ids(np.array([image_id], np.int64))  # type: ignore[arg-type]
                person.ids.discard(image_id)
                person.dirty = True

    def ids_of(self, user_id: int) -> set[int] | None:
        """The image ids in the person's index; None if it is not loaded."""
        with self._lock:
            person = self._people.get(user_id)
            return None if person is None else set(person.ids)

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
            faiss.omp_set_num_threads(1)  # per calling thread; see the module docstring
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
                # Per process: workers sharing DATA_DIR each write their own copy.
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                faiss.write_index(person.index, str(tmp))
                os.replace(tmp, path)
                person.dirty = False
                written += 1
        return written


def index_directory(root: Path, encoder_version: str) -> Path:
    """One folder per encoder version: vectors of different encoders never mix."""
    return root / re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder_version)
