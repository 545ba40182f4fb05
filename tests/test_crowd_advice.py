"""Advice for heads from other people's votes: what it learns, how a head uses it, the file."""

import json
from pathlib import Path

import numpy as np
import pytest

from learner.crowd import CrowdModel, train_crowd
from learner.crowd_advice import MIN_PEOPLE, REACH, Advice, _column_aucs, learn_advice
from learner.head import train_head
from learner.head_fit import RIDGE_LAMBDAS, _salient_stretch
from learner.head_parts import LinearChoice
from learner.metrics import roc_auc


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _direction_people(
    rng: np.random.Generator, people: int, votes: int, d: int = 24
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each person likes the top 30% along a direction of their own (a style)."""
    xs, ys, ids = [], [], []
    for p in range(people):
        x = _unit(rng.normal(size=(votes, d)))
        score = x @ rng.normal(size=d)
        ys.append(score > np.quantile(score, 0.7))
        xs.append(x)
        ids.append(np.full(votes, p))
    return np.vstack(xs), np.concatenate(ys), np.concatenate(ids)


def _cluster_people(
    rng: np.random.Generator, people: int, votes: int, d: int = 24
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images in 12 tight clusters; each person likes 3 of them, scattered around the space
    (no direction separates them from the rest: a taste in subjects)."""
    centres = _unit(rng.normal(size=(12, d)))
    xs, ys, ids = [], [], []
    for p in range(people):
        cls = rng.integers(0, 12, votes)
        x = _unit(centres[cls] + 0.12 * rng.normal(size=(votes, d)))
        ys.append(np.isin(cls, rng.choice(12, 3, replace=False)))
        xs.append(x)
        ids.append(np.full(votes, p))
    return np.vstack(xs), np.concatenate(ys), np.concatenate(ids)


def _advice(x: np.ndarray, y: np.ndarray, ids: np.ndarray) -> Advice:
    advice = learn_advice(x, y, np.ones(len(y)), ids)
    assert advice is not None
    return advice


def test_a_crowd_of_direction_tastes_advises_the_linear_part() -> None:
    advice = _advice(*_direction_people(np.random.default_rng(0), 30, 120))
    assert advice.budgets == (10, 20, 50, 100)  # 120 votes: held-out votes beyond 100 only
    linear_share = [blend[0] for blend in advice.blends]
    assert np.mean(linear_share) >= 0.6, advice


def test_a_crowd_of_subject_tastes_advises_the_centroid_and_nearest_votes() -> None:
    advice = _advice(*_cluster_people(np.random.default_rng(1), 30, 120))
    linear_share = [blend[0] for blend in advice.blends]
    assert np.mean(linear_share) <= 0.4, advice


def test_the_advice_is_from_enough_held_out_votes_only() -> None:
    x, y, ids = _direction_people(np.random.default_rng(2), 6, 40)
    advice = _advice(x, y, ids)
    assert advice.budgets == (10, 20)  # 50 + 20 held out > 40 votes
    assert advice.people == (6, 6)
    first = np.concatenate([np.flatnonzero(ids == p)[:15] for p in range(6)])  # 15 a person
    assert learn_advice(x[first], y[first], np.ones(len(first)), ids[first]) is None
    few = ids < MIN_PEOPLE - 1  # enough votes, too few people
    assert learn_advice(x[few], y[few], np.ones(int(few.sum())), ids[few]) is None


def test_advice_at_picks_the_nearest_budget_and_leaves_many_votes_to_the_person() -> None:
    choices = tuple(LinearChoice(i % 2 == 0, RIDGE_LAMBDAS[i]) for i in range(3))
    blends = ((1.0, 0.0, 0.0), (0.5, 0.25, 0.25), (0.0, 0.5, 0.5))
    advice = Advice((10, 20, 50), choices, blends, (5, 5, 5))
    linear, default = advice.at(14)  # log 14 is nearer log 10 than log 20
    assert linear == choices[0] and default.tolist() == [1.0, 0.0, 0.0]
    assert advice.at(15)[0] == choices[1]
    assert advice.at(0)[0] == choices[0]
    assert advice.at(int(REACH * 50))[0] == choices[2]
    linear, default = advice.at(int(REACH * 50) + 1)
    assert linear is None and default.tolist() == [0.0, 0.5, 0.5]


def test_column_aucs_are_roc_aucs_with_ties() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(50) < 0.4
    scores = np.round(rng.normal(size=(50, 4)), 1)  # many ties
    got = _column_aucs(y, scores)
    for col in range(4):
        assert got[col] == pytest.approx(roc_auc(y, scores[:, col]))


@pytest.mark.parametrize("n", [12, 40])
def test_salient_stretch_from_few_images_equals_the_covariance_route(n: int) -> None:
    """Fewer images than dimensions take the n x n Gram route; it must be the same map."""
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 32)) * np.where(np.arange(32) < 4, 4.0, 1.0)
    centred = x - x.mean(axis=0)
    ev, vec = np.linalg.eigh(centred.T @ centred / (n - 1))
    ev = np.maximum(ev, 0.0)
    m = ev.mean()
    expected = (vec * np.sqrt((ev + m) / (2 * m))) @ vec.T  # SALIENT_SHRINK = 1
    np.testing.assert_allclose(_salient_stretch(x, None), expected, atol=1e-10)


def test_a_head_follows_the_crowds_advice_up_to_its_reach() -> None:
    rng = np.random.default_rng(4)
    crowd = train_crowd(*_direction_people(rng, 30, 120)[:2], None, np.repeat(np.arange(30), 120))
    assert crowd.advice is not None
    x, y, _ = _direction_people(rng, 1, 400)
    few = train_head(x[:20], y[:20], crowd=crowd)
    choice, _ = crowd.advice.at(20)
    assert choice is not None
    assert few.info()["crowd_advice"] is True
    assert few.info()["lambda"] == choice.penalty
    assert few.info()["salient_prior"] == choice.salient
    many = train_head(x[:300], y[:300], crowd=crowd)
    assert many.info()["crowd_advice"] is False  # 300 > REACH * 100 votes: the person's LOO
    assert train_head(x[:20], y[:20]).info()["crowd_advice"] is False  # no crowd model


def test_a_blend_without_the_linear_part_scores_and_saves(tmp_path: Path) -> None:
    """Advice may give the linear part no weight; the head must still score, and the crowd's
    offset, folded into the linear weights, must still count."""
    rng = np.random.default_rng(5)
    x, y, ids = _cluster_people(rng, 20, 120)
    crowd = train_crowd(x, y, None, ids)
    no_linear = Advice((20,), (LinearChoice(False, 1.0),), ((0.0, 0.5, 0.5),), (20,))
    crowd = CrowdModel(crowd.direction, crowd.platt_a, crowd.platt_c, crowd.meta, no_linear)
    xs, ys, _ = _cluster_people(rng, 1, 200)
    head = train_head(xs[:20], ys[:20], crowd=crowd)
    p = head.predict(xs[20:])
    assert np.isfinite(p).all() and roc_auc(ys[20:], p) > 0.7
    head.save(tmp_path / "h.npz")
    np.testing.assert_array_equal(type(head).load(tmp_path / "h.npz").predict(xs), head.predict(xs))


def test_the_advice_survives_the_crowd_file_and_a_format_1_file_still_loads(
    tmp_path: Path,
) -> None:
    x, y, ids = _direction_people(np.random.default_rng(6), 12, 80)
    model = train_crowd(x, y, None, ids)
    path = tmp_path / "crowd.npz"
    model.save(path)
    assert CrowdModel.load(path).advice == model.advice and model.advice is not None
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        direction = z["direction"]
    meta["format_version"] = 1
    del meta["advice"]
    np.savez(path, direction=direction, meta=np.array(json.dumps(meta)))
    old = CrowdModel.load(path)
    assert old.advice is None
    np.testing.assert_array_equal(old.predict(x), model.predict(x))
