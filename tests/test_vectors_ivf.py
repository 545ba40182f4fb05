"""VoteIndex above its flat limit: an IVF index, same answers, same persistence."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from storage.vectors import VoteIndex

DIM = 16


def clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, DIM)).astype(np.float32)
    x = centres[rng.integers(0, 20, n)] + 0.3 * rng.standard_normal((n, DIM)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def as_bytes(vectors: np.ndarray, first_id: int = 1) -> dict[int, bytes]:
    return {first_id + i: v.tobytes() for i, v in enumerate(vectors)}


def exact_top(vectors: np.ndarray, query: np.ndarray, k: int, first_id: int = 1) -> list[int]:
    return [first_id + int(i) for i in np.argsort(-(vectors @ query))[:k]]


def test_a_large_index_is_rebuilt_as_ivf_and_reloads(tmp_path: Path) -> None:
    vectors = clustered(600)
    index = VoteIndex(tmp_path, DIM, flat_limit=200)
    assert index.sync(7, as_bytes(vectors)) is True
    assert isinstance(index._people[7].index, faiss.IndexIVFFlat)
    assert index.count(7) == 600
    query = vectors[10]
    found = index.search(7, query, 5, exclude_image_id=11)
    assert 11 not in [n.image_id for n in found] and len(found) == 5
    assert [n.image_id for n in found][:3] == [i for i in exact_top(vectors, query, 6) if i != 11][
        :3
    ]
    index.remove(7, found[0].image_id)
    assert found[0].image_id not in [n.image_id for n in index.search(7, query, 5)]
    index.flush()

    again = VoteIndex(tmp_path, DIM, flat_limit=200)
    wanted = set(as_bytes(vectors)) - {found[0].image_id}
    assert again.sync(7, {i: vectors[i - 1].tobytes() for i in wanted}) is False  # file is current
    assert isinstance(again._people[7].index, faiss.IndexIVFFlat)
    assert [n.image_id for n in again.search(7, query, 4)] == [
        n.image_id for n in index.search(7, query, 4)
    ]


def test_crossing_the_limit_by_adding_switches_in_the_background(tmp_path: Path) -> None:
    vectors = clustered(400, seed=1)
    index = VoteIndex(tmp_path, DIM, flat_limit=300)
    for i, vector in enumerate(vectors[:350], start=1):
        index.add(3, i, vector)
    # Searches keep working whichever index is in place; votes keep landing meanwhile.
    for i, vector in enumerate(vectors[350:], start=351):
        index.add(3, i, vector)
    index.remove(3, 5)
    index.wait_for_upgrades(timeout=60)
    person = index._people[3]
    assert isinstance(person.index, faiss.IndexIVFFlat)
    assert index.count(3) == 399 and person.ids == set(range(1, 401)) - {5}
    top = [n.image_id for n in index.search(3, vectors[99], 3)]
    assert top[0] == 100
    assert 5 not in [n.image_id for n in index.search(3, vectors[4], 10)]
    assert index.flush() == 1
