"""The crowd model: training on everyone's votes, evaluation for gating, the file."""

import json
from pathlib import Path

import numpy as np
import pytest

from learner.crowd import (
    WITHIN_PERSON_BLOCK,
    CrowdModel,
    _within_person,
    evaluate_crowd,
    promote_crowd,
    train_crowd,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _people(
    rng: np.random.Generator, people: int, votes: int, d: int = 16, share: float = 0.7
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each person likes along share * (a direction everyone shares) + (1 - share) * their own,
    and has a like rate of their own (the threshold): what the crowd can learn is the shared
    direction."""
    shared = np.eye(d)[0]
    xs, ys, ids = [], [], []
    for p in range(people):
        x = _unit(rng.normal(size=(votes, d)))
        own = _unit(rng.normal(size=(1, d)))[0]
        score = x @ (share * shared + (1 - share) * own)
        ys.append(score > np.quantile(score, rng.uniform(0.3, 0.8)))
        xs.append(x)
        ids.append(np.full(votes, 100 + 7 * p))  # any ids, not 0..n-1
    return np.vstack(xs), np.concatenate(ys), np.concatenate(ids)


def test_the_crowd_model_ranks_a_shared_taste_for_people_it_never_saw() -> None:
    rng = np.random.default_rng(0)
    x, liked, ids = _people(rng, 30, 80)
    model = train_crowd(x, liked, None, ids)
    assert float(model.direction[0]) / np.linalg.norm(model.direction) > 0.9
    new_x, new_liked, new_ids = _people(np.random.default_rng(1), 20, 60)
    auc = evaluate_crowd(model, new_x, new_liked, new_ids)
    assert auc is not None and auc > 0.8
    assert model.info()["heldout_auc"] > 0.8  # its own estimate, people held out in folds
    p = model.predict(new_x)
    assert np.all((p > 0) & (p < 1))
    # calibrated for a newcomer: the mean score is about the mean like rate
    assert abs(float(p.mean()) - float(new_liked.mean())) < 0.1


def test_who_votes_on_what_is_not_taste() -> None:
    """Person A votes on images along +e1 and likes them all but one; person B votes on images
    along -e1 and dislikes them all but one. Pooled, e1 would look like taste; within each
    person it says nothing, and the shared taste (e0) is what the model learns."""
    rng = np.random.default_rng(2)
    d, n = 8, 200
    xs, ys, ids = [], [], []
    for p, sign in enumerate((1.0, -1.0) * 10):
        x = rng.normal(size=(n, d))
        x[:, 1] += 4 * sign
        x = _unit(x)
        liked = x[:, 0] > np.quantile(x[:, 0], 0.5 - 0.4 * sign)  # like rate 90% / 10%
        xs.append(x)
        ys.append(liked)
        ids.append(np.full(n, p))
    x, y = np.vstack(xs), np.concatenate(ys)
    model = train_crowd(x, y, None, np.concatenate(ids))
    v = model.direction / np.linalg.norm(model.direction)
    pooled = np.linalg.lstsq(np.hstack([x, np.ones((len(x), 1))]), 2.0 * y - 1, rcond=None)[0]
    assert v[0] > 0.9
    assert abs(v[1] / v[0]) < 0.6 * abs(pooled[1] / pooled[0])  # pooling: twice the lean


def test_weights_count_super_likes_more() -> None:
    rng = np.random.default_rng(3)
    x = _unit(rng.normal(size=(400, 4)))
    liked = x[:, 0] > 0
    # likes along e1 are super likes: with more weight, the model leans towards e1
    weights = np.where(liked & (x[:, 1] > 0), 5.0, 1.0)
    ids = np.repeat(np.arange(8), 50)
    plain = train_crowd(x, liked, None, ids).direction
    weighted = train_crowd(x, liked, weights, ids).direction
    assert weighted[1] / weighted[0] > plain[1] / plain[0]


def test_save_load_round_trip_is_exact_and_holds_no_votes(tmp_path: Path) -> None:
    x, liked, ids = _people(np.random.default_rng(4), 10, 40)
    model = train_crowd(x, liked, None, ids, trained_on={"encoder": "clip-test", "votes_until": 9})
    path = tmp_path / "crowd.npz"
    model.save(path)
    loaded = CrowdModel.load(path)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.info() == model.info()
    assert loaded.info()["encoder"] == "clip-test" and loaded.info()["n_people"] == 10
    assert loaded.info()["n_votes"] == len(x)
    with np.load(path, allow_pickle=False) as z:
        # no one's embeddings or votes: the direction, and the taste metric when the advice
        # uses it (at most one eigenvector a person, from the average over people)
        assert set(z.files) <= {"direction", "meta", "metric_values", "metric_vectors"}
        assert z["direction"].shape == (16,)
        if "metric_vectors" in z.files:
            rank = len(z["metric_values"])
            assert rank <= 10 and z["metric_vectors"].shape == (16, rank)
    assert list(tmp_path.iterdir()) == [path]


def test_another_format_is_refused_with_a_reason(tmp_path: Path) -> None:
    x, liked, ids = _people(np.random.default_rng(5), 5, 30)
    path = tmp_path / "crowd.npz"
    train_crowd(x, liked, None, ids).save(path)
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        direction = z["direction"]
    meta["format_version"] = 99
    np.savez(path, direction=direction, meta=np.array(json.dumps(meta)))
    with pytest.raises(ValueError, match="99"):
        CrowdModel.load(path)
    np.savez(tmp_path / "head.npz", weights=np.zeros(3))
    with pytest.raises(ValueError, match="not a crowd model"):
        CrowdModel.load(tmp_path / "head.npz")


def test_no_preference_to_learn_is_an_error() -> None:
    x = _unit(np.random.default_rng(6).normal(size=(20, 4)))
    ids = np.repeat([1, 2], 10)
    liked = np.repeat([True, False], 10)  # one person likes all, the other dislikes all
    with pytest.raises(ValueError, match="like and a dislike"):
        train_crowd(x, liked, None, ids)
    with pytest.raises(ValueError):
        train_crowd(x, liked[:5], None, ids)


def test_a_one_sided_person_does_not_count() -> None:
    rng = np.random.default_rng(7)
    x, liked, ids = _people(rng, 10, 50)
    model = train_crowd(x, liked, None, ids)
    extra = _unit(rng.normal(size=(50, 16)))
    with_fan = train_crowd(
        np.vstack([x, extra]),
        np.concatenate([liked, np.ones(50, bool)]),
        None,
        np.concatenate([ids, np.full(50, -1)]),
    )
    np.testing.assert_allclose(with_fan.direction, model.direction)
    assert with_fan.info()["n_people"] == 10


def test_evaluate_crowd_averages_over_people_and_gates_promotion() -> None:
    rng = np.random.default_rng(8)
    x, liked, ids = _people(rng, 20, 60)
    good = train_crowd(x, liked, None, ids)
    bad = CrowdModel(-good.direction, good.platt_a, good.platt_c, {})
    hx, hy, hids = _people(np.random.default_rng(9), 10, 40)
    g, b = evaluate_crowd(good, hx, hy, hids), evaluate_crowd(bad, hx, hy, hids)
    assert g is not None and b is not None and g > 0.75 and b == pytest.approx(1 - g)
    assert evaluate_crowd(good, hx[:10], np.ones(10, bool), hids[:10]) is None  # cannot rank
    assert promote_crowd(g, b)[0] and not promote_crowd(b, g)[0]
    assert promote_crowd(g, None)[0]  # the first crowd model
    assert not promote_crowd(None, g)[0]


def test_each_persons_weighted_mean_is_taken_out_across_blocks_of_rows() -> None:
    rng = np.random.default_rng(5)
    n = 2 * WITHIN_PERSON_BLOCK + 7  # a person's rows in several blocks, the last one short
    x = rng.normal(size=(n, 6)).astype(np.float32)
    t, w, groups = rng.normal(size=n), rng.uniform(0.5, 2.0, n), rng.integers(0, 9, n)
    xc, tc = _within_person(x, t, w, groups)
    assert xc.dtype == np.float32 and xc.shape == x.shape
    for g in range(9):
        rows = groups == g
        mean_x = np.average(x[rows].astype(np.float64), axis=0, weights=w[rows])
        np.testing.assert_allclose(xc[rows], x[rows] - mean_x, atol=1e-6)
        np.testing.assert_allclose(tc[rows], t[rows] - np.average(t[rows], weights=w[rows]))
