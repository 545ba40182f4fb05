"""Advice for heads from other people's votes: what it learns, how a head uses it, the file."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from learner.advice import REACH, Advice
from learner.crowd import CrowdModel, train_crowd
from learner.crowd_advice import (
    METRIC_STRENGTHS,
    MIN_PEOPLE,
    _best_beyond_noise,
    _option_products,
    _ridge_test_scores,
    learn_advice,
)
from learner.head import train_head
from learner.head_fit import (
    MAX_PLATT_SLOPE,
    MIN_PLATT_SLOPE,
    PLATT_PRIOR,
    RIDGE_LAMBDAS,
    _fit_platt,
    _platt_fits,
    _salient_axes,
    _salient_stretch,
    _sigmoid,
)
from learner.head_parts import (
    LinearChoice,
    balanced_weights,
    fit_parts,
    without_crowd_prior,
)
from learner.metrics import column_aucs, roc_auc
from learner.taste_metric import (
    MAX_METRIC_RANK,
    TasteMetric,
    image_metric,
    metric_without,
    taste_directions,
    taste_metric,
)


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
    advice = Advice((10, 20, 50), choices, blends, (5, 5, 5), (0.0, 0.25, 0.5))
    linear, default, trust, _ = advice.at(14)  # log 14 is nearer log 10 than log 20
    assert linear == choices[0] and default.tolist() == [1.0, 0.0, 0.0] and trust == 0.0
    assert advice.at(15)[0] == choices[1] and advice.at(15)[2] == 0.25
    assert advice.at(0)[0] == choices[0]
    assert advice.at(int(REACH * 50))[0] == choices[2]
    linear, default, trust, _ = advice.at(int(REACH * 50) + 1)
    assert linear is None and default.tolist() == [0.0, 0.5, 0.5] and trust is None
    assert Advice((10,), choices[:1], blends[:1], (5,)).at(10)[2] is None  # before the trust


def test_column_aucs_are_roc_aucs_with_ties() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(50) < 0.4
    scores = np.round(rng.normal(size=(50, 4)), 1)  # many ties
    got = column_aucs(y, scores)
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
    np.testing.assert_allclose(
        _salient_stretch(x, _salient_axes(x, None)), x @ expected, atol=1e-10
    )


def test_a_head_follows_the_crowds_advice_up_to_its_reach() -> None:
    rng = np.random.default_rng(4)
    crowd = train_crowd(*_direction_people(rng, 30, 120)[:2], None, np.repeat(np.arange(30), 120))
    assert crowd.advice is not None
    x, y, _ = _direction_people(rng, 1, 600)
    few = train_head(x[:20], y[:20], crowd=crowd)
    choice = crowd.advice.at(20)[0]
    assert choice is not None
    assert few.info()["crowd_advice"] is True
    assert few.info()["lambda"] == choice.penalty
    assert few.info()["salient_prior"] == choice.salient
    assert crowd.advice.budgets[-1] == 100  # 120 votes a person: 100 + 20 held out
    reach = int(REACH * 100)
    within = train_head(x[:reach], y[:reach], crowd=crowd)
    assert within.info()["crowd_advice"] is True
    many = train_head(x[: reach + 1], y[: reach + 1], crowd=crowd)
    assert many.info()["crowd_advice"] is False  # beyond: the person's LOO
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


def _subspace_people(
    rng: np.random.Generator, people: int, votes: int, d: int = 48, k: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each person likes the top 30% along a direction of their own, all directions in one
    k-dimensional subspace of the d dimensions (the first k): tastes differ in few ways."""
    xs, ys, ids = [], [], []
    for p in range(people):
        x = _unit(rng.normal(size=(votes, d)))
        score = x[:, :k] @ rng.normal(size=k)
        ys.append(score > np.quantile(score, 0.7))
        xs.append(x)
        ids.append(np.full(votes, p))
    return np.vstack(xs), np.concatenate(ys), np.concatenate(ids)


def test_the_taste_metric_spans_the_directions_people_differ_in() -> None:
    x, y, ids = _subspace_people(np.random.default_rng(7), 40, 150)
    people = [np.flatnonzero(ids == p) for p in range(40)]
    metric = taste_metric(x, y, np.ones(len(y)), people, MIN_PEOPLE)
    assert metric is not None
    assert metric.values.sum() == pytest.approx(48)  # trace d: the identity's
    top = metric.vectors[:, np.argsort(-metric.values)[:4]]
    assert np.linalg.norm(top[:4]) ** 2 > 0.9 * 4  # the top 4 lie in the taste subspace
    explicit = metric.vectors @ np.diag(metric.values) @ metric.vectors.T
    ev, vec = np.linalg.eigh(0.5 * explicit + 0.5 * np.eye(48))
    root = (vec * np.sqrt(np.maximum(ev, 0.0))) @ vec.T
    np.testing.assert_allclose(metric.stretch(x[:5], 0.5), x[:5] @ root, atol=1e-9)
    few = [np.flatnonzero(ids == p) for p in range(MIN_PEOPLE - 1)]
    assert taste_metric(x, y, np.ones(len(y)), few, MIN_PEOPLE) is None


@pytest.mark.parametrize(("people", "d"), [(40, 48), (12, 8)])
def test_the_metric_without_one_person_is_everyone_elses(people: int, d: int) -> None:
    """The advice scores a person's held-out votes in the metric of everyone else's directions:
    the rank-one downdate equals the metric learnt again without that person (a metric of more
    people than dimensions included)."""
    rng = np.random.default_rng(people)
    x = _unit(rng.normal(size=(people * 30, d)))
    y = x @ rng.normal(size=d) + rng.normal(size=len(x)) > 0
    ones = np.ones(len(y))
    by_person = [np.arange(p * 30, (p + 1) * 30) for p in range(people)]
    metric = taste_metric(x, y, ones, by_person, MIN_PEOPLE)
    directions = taste_directions(x, y, ones, by_person)
    assert metric is not None
    for p in (0, people // 2):
        direction = directions[p]
        assert direction is not None
        got = metric_without(metric, direction, people)
        again = taste_metric(x, y, ones, by_person[:p] + by_person[p + 1 :], MIN_PEOPLE)
        assert again is not None
        np.testing.assert_allclose(
            (got.vectors * got.values) @ got.vectors.T,
            (again.vectors * again.values) @ again.vectors.T,
            atol=1e-9,
        )
        assert got.values.sum() == pytest.approx(d)


def test_the_image_metric_is_where_the_images_vary_most() -> None:
    rng = np.random.default_rng(11)
    loud = np.where(np.arange(40) < 3, 4.0, 1.0)
    x = _unit(rng.normal(size=(600, 40)) * loud)
    metric = image_metric(x)
    assert metric.values.sum() == pytest.approx(40)  # trace d: the identity's
    top = metric.vectors[:, np.argsort(-metric.values)[:3]]
    assert np.linalg.norm(top[:3]) ** 2 > 0.95 * 3  # the top 3 are the loud dimensions
    centred = x - x.mean(axis=0)
    covariance = centred.T.astype(np.float64) @ centred / len(x)
    explicit = metric.vectors @ np.diag(metric.values) @ metric.vectors.T
    np.testing.assert_allclose(explicit, covariance * 40 / np.trace(covariance), atol=1e-5)
    wide = image_metric(_unit(rng.normal(size=(300, MAX_METRIC_RANK + 16))))
    assert len(wide.values) == MAX_METRIC_RANK  # only the largest directions are kept


def _loud_people(
    rng: np.random.Generator, people: int, votes: int, on_loud: bool, d: int = 48, k: int = 6
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images that vary three times as much along k of the d dimensions as along the rest;
    each person likes the top 30% along a direction of their own, drawn in the k loud
    dimensions in proportion to how much the images vary there (``on_loud``) or in k faint
    ones."""
    scale = np.where(np.arange(d) < k, 3.0, 1.0)
    dims = np.arange(k) if on_loud else np.arange(d - k, d)
    xs, ys, ids = [], [], []
    for p in range(people):
        x = _unit(rng.normal(size=(votes, d)) * scale)
        score = x[:, dims] @ (rng.normal(size=k) * scale[dims])
        ys.append(score > np.quantile(score, 0.7))
        xs.append(x)
        ids.append(np.full(votes, p))
    return np.vstack(xs), np.concatenate(ys), np.concatenate(ids)


def test_the_image_metric_is_advised_where_tastes_follow_how_images_vary_only(
    tmp_path: Path,
) -> None:
    """Where tastes lie along the directions in which the images vary most, the advice fits a
    newcomer's linear part in the image metric at some vote count, and their head does so;
    where tastes lie along faint directions, it never chooses the image metric."""
    x, y, ids = _loud_people(np.random.default_rng(12), 24, 100, on_loud=True)
    crowd = train_crowd(x, y, None, ids)
    advice = crowd.advice
    assert advice is not None and advice.images is not None
    chosen = [
        (b, c) for b, c in zip(advice.budgets, advice.linear, strict=True) if c.images and c.metric
    ]
    assert chosen, advice.linear
    budget, choice = chosen[0]
    xs, ys, _ = _loud_people(np.random.default_rng(13), 1, budget, on_loud=True)
    head = train_head(xs, ys, crowd=crowd)
    info, scores = head.info(), head.predict(xs)
    assert info["image_metric"] == choice.metric and info["taste_metric"] == 0.0
    crowd.save(tmp_path / "crowd.npz")
    again = CrowdModel.load(tmp_path / "crowd.npz")
    _same_advice(again.advice, advice)
    np.testing.assert_array_equal(train_head(xs, ys, crowd=again).predict(xs), scores)
    x, y, ids = _loud_people(np.random.default_rng(12), 24, 100, on_loud=False)
    faint = train_crowd(x, y, None, ids)
    assert faint.advice is not None
    assert not any(c.images for c in faint.advice.linear), faint.advice.linear


def test_a_head_learns_faster_in_the_crowds_taste_metric() -> None:
    """Where everyone's taste lies in a few directions, the advice fits the linear part in the
    crowd's metric, and a newcomer's 20 votes then rank new images better than with the same
    advice in plain x."""
    rng = np.random.default_rng(8)
    x, y, ids = _subspace_people(rng, 40, 150)
    crowd = train_crowd(x, y, None, ids)
    advice = crowd.advice
    assert advice is not None and advice.metric is not None
    choice = advice.at(20)[0]
    assert choice is not None and choice.metric > 0
    plain = [dataclasses.replace(c, metric=0.0) for c in advice.linear]
    in_plain_x = dataclasses.replace(crowd, advice=dataclasses.replace(advice, linear=tuple(plain)))
    gains = []
    for _ in range(6):
        xs, ys, _ = _subspace_people(rng, 1, 400)
        with_metric = train_head(xs[:20], ys[:20], crowd=crowd)
        assert with_metric.info()["taste_metric"] == choice.metric
        without = train_head(xs[:20], ys[:20], crowd=in_plain_x)
        assert without.info()["taste_metric"] == 0.0
        gains.append(
            roc_auc(ys[20:], with_metric.predict(xs[20:]))
            - roc_auc(ys[20:], without.predict(xs[20:]))
        )
    assert np.mean(gains) > 0.05, gains


def _same_advice(a: Advice | None, b: Advice | None) -> None:
    assert a is not None and b is not None
    assert (a.budgets, a.linear, a.blends, a.people, a.trusts, a.offsets) == (
        b.budgets,
        b.linear,
        b.blends,
        b.people,
        b.trusts,
        b.offsets,
    )
    for mine, theirs in ((a.metric, b.metric), (a.images, b.images)):
        assert (mine is None) == (theirs is None)
        if mine is not None and theirs is not None:
            np.testing.assert_array_equal(mine.values, theirs.values)
            np.testing.assert_array_equal(mine.vectors, theirs.vectors)


def test_the_advice_survives_the_crowd_file_and_older_files_still_load(tmp_path: Path) -> None:
    x, y, ids = _subspace_people(np.random.default_rng(6), 20, 80)
    model = train_crowd(x, y, None, ids)
    assert model.advice is not None and model.advice.metric is not None
    path = tmp_path / "crowd.npz"
    model.save(path)
    _same_advice(CrowdModel.load(path).advice, model.advice)
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        direction = z["direction"]
        arrays = {k: z[k] for k in z.files if k != "meta"}
    # format 3: advice without the crowd prior's choice; the crowd logit may always be the prior
    meta["format_version"] = 3
    del meta["advice"]["crowd_priors"]
    np.savez(path, **arrays, meta=np.array(json.dumps(meta)))
    three = CrowdModel.load(path).advice
    assert three is not None and all(c.crowd_prior for c in three.linear)
    assert any(not c.crowd_prior for c in model.advice.linear)  # so the line above can fail
    # format 2: advice without the trust and the metric; a head then fits as it did then
    meta["format_version"] = 2
    for key in ("trusts", "metric_strengths", "offsets"):
        del meta["advice"][key]
    np.savez(path, direction=direction, meta=np.array(json.dumps(meta)))
    two = CrowdModel.load(path)
    assert two.advice is not None and two.advice.trusts is None and two.advice.metric is None
    assert two.advice.offsets is None
    assert all(c.metric == 0.0 for c in two.advice.linear)
    meta["format_version"] = 1
    del meta["advice"]
    np.savez(path, direction=direction, meta=np.array(json.dumps(meta)))
    old = CrowdModel.load(path)
    assert old.advice is None
    np.testing.assert_array_equal(old.predict(x), model.predict(x))


@pytest.mark.parametrize("trust", [0.0, 1.0])
def test_a_head_moves_from_the_advised_blend_as_far_as_the_advice_trusts_its_own(
    trust: float,
) -> None:
    rng = np.random.default_rng(9)
    x, y, ids = _cluster_people(rng, 20, 120)
    crowd = train_crowd(x, y, None, ids)
    default = (0.25, 0.25, 0.5)
    advice = Advice((20,), (LinearChoice(False, 1.0),), (default,), (20,), (trust,))
    crowd = CrowdModel(crowd.direction, crowd.platt_a, crowd.platt_c, crowd.meta, advice)
    xs, ys, _ = _cluster_people(rng, 1, 60)
    info = train_head(xs[:20], ys[:20], crowd=crowd).info()
    blend = [info["blend_linear"], info["blend_centroid"], info["blend_nearest"]]
    if trust == 0.0:
        assert blend == pytest.approx(default)
    else:  # the person's own LOO blend alone: a point of the grid, not the default
        assert blend != pytest.approx(default)
        assert np.allclose(np.array(blend) * 8, np.round(np.array(blend) * 8))


def test_batched_platt_fits_maximise_each_columns_own_likelihood() -> None:
    """Each column's (a, c) is the maximum of its own penalised likelihood, with its own eps and
    offset: scipy's bounded optimiser, column by column, finds no better point."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(10)
    y = (rng.random(80) < 0.4).astype(np.float64)
    scores = rng.normal(size=(80, 6)) + (y[:, None] - 0.4) * np.array([0, 0.5, 1, 2, 4, -1])
    scores[:, 5] = (y - 0.5) * 3  # separable: the prior keeps the fit finite
    eps = np.array([0.0, 0.05, 0.0, 0.1, 0.0, 0.025])
    off = rng.normal(size=(80, 6)) * np.array([0.0, 0.0, 1.0, 0.5, 0.0, 0.0])
    a, c, ll = _platt_fits(scores, y, eps, off)
    # one score column shared by every eps and offset fits as that column repeated
    shared = _platt_fits(scores[:, :1], y, eps, off)
    repeated = _platt_fits(np.repeat(scores[:, :1], 6, axis=1), y, eps, off)
    for got, expected in zip(shared, repeated, strict=True):
        np.testing.assert_array_equal(got, expected)
    for j in range(6):
        sd = scores[:, j].std()

        def log_likelihood(v: np.ndarray, j: int = j, sd: float = sd) -> float:
            q = _sigmoid(v[0] * scores[:, j] / sd + v[1] + off[:, j])
            p = np.clip(eps[j] + (1 - 2 * eps[j]) * q, 1e-12, 1 - 1e-12)
            return float(y @ np.log(p) + (1 - y) @ np.log(1 - p))

        def loss(v: np.ndarray, f=log_likelihood) -> float:  # type: ignore[no-untyped-def]
            return -f(v) + 0.5 * PLATT_PRIOR * float(v @ v)

        bounds = [(MIN_PLATT_SLOPE, MAX_PLATT_SLOPE), (None, None)]
        other = minimize(loss, np.array([1.0, 0.0]), bounds=bounds, method="L-BFGS-B")
        mine = np.array([a[j] * sd, c[j]])
        assert loss(mine) <= other.fun + 1e-6
        assert ll[j] == pytest.approx(log_likelihood(mine))
        single = _fit_platt(scores[:, j], y, float(eps[j]), off[:, j])
        assert single == pytest.approx((a[j], c[j], ll[j]), abs=1e-6)


def test_kernel_ridge_scores_are_the_ridge_fitted_on_the_features() -> None:
    """From inner products alone, the ridge (bias a penalised ones column) scores new images
    as the weights fitted on the features do."""
    rng = np.random.default_rng(4)
    xt, xs = rng.normal(size=(30, 12)), rng.normal(size=(9, 12))
    t = np.where(rng.random(30) < 0.4, 1.0, -1.0)
    sw = rng.uniform(0.5, 2.0, size=30)
    got = _ridge_test_scores(xt @ xt.T, xs @ xt.T, t, sw)
    z = np.hstack([xt, np.ones((30, 1))])
    for col, lam in enumerate(RIDGE_LAMBDAS):
        beta = np.linalg.solve(z.T @ (sw[:, None] * z) + lam * np.eye(13), z.T @ (sw * t))
        np.testing.assert_allclose(got[:, col], np.hstack([xs, np.ones((9, 1))]) @ beta, atol=1e-8)


@pytest.mark.parametrize("n", [12, 40])
def test_the_advices_inner_products_are_those_of_the_mapped_images(n: int) -> None:
    """Plain x, x in the salient stretch and x in the taste metric at each strength: the
    products the advice computes without mapping any image are those of the mapped images."""
    rng = np.random.default_rng(n)
    xt = rng.normal(size=(n, 32)) * np.where(np.arange(32) < 4, 4.0, 1.0)
    xs = rng.normal(size=(7, 32))
    q, _ = np.linalg.qr(rng.normal(size=(32, 5)))
    metric = TasteMetric(np.array([9.0, 5.0, 3.0, 2.0, 1.0]), q)
    images = TasteMetric(np.array([20.0, 6.0, 6.0]), q[:, 2:])
    axes = _salient_axes(xt, None)
    maps = [lambda v: v, lambda v: _salient_stretch(v, axes)]
    maps += [
        lambda v, m=m, a=a: m.stretch(v, a) for m in (metric, images) for a in METRIC_STRENGTHS
    ]
    got = _option_products(xt, xs, [metric, images])
    assert len(got) == len(maps)
    for products, mapped in zip(got, maps, strict=True):
        expected = np.vstack([mapped(xt), mapped(xs)]) @ mapped(xt).T
        np.testing.assert_allclose(products, expected, atol=1e-8)
    assert len(_option_products(xt, xs, [None, None])) == 2  # no metric: plain and salient only


def _shared_people(
    rng: np.random.Generator, people: int, votes: int, d: int = 24
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Everyone likes the top 30% along one shared direction plus a little of their own."""
    shared = rng.normal(size=d)
    xs, ys, ids = [], [], []
    for p in range(people):
        x = _unit(rng.normal(size=(votes, d)))
        score = x @ (shared + 0.3 * rng.normal(size=d))
        ys.append(score > np.quantile(score, 0.7))
        xs.append(x)
        ids.append(np.full(votes, p))
    return np.vstack(xs), np.concatenate(ys), np.concatenate(ids)


def test_the_crowd_enters_heads_where_people_share_a_taste_only() -> None:
    """With the fewest votes, a crowd that shares one taste advises using the crowd model's
    logit (as the linear part's prior or as an offset to the score); a crowd of unrelated
    tastes never advises its prior, and whatever offset the plain argmax picks among near-equal
    held-out AUCs moves no score by a tenth of a nat: that crowd model's logit is flat (it
    knows nothing; the person's own LOO may still add it as an offset, with a one-nat
    margin)."""
    shared = train_crowd(
        *_shared_people(np.random.default_rng(11), 30, 120)[:2], None, np.repeat(np.arange(30), 120)
    )
    assert shared.advice is not None and shared.advice.offsets is not None
    fewest = shared.advice.offsets[0]  # 10 votes
    assert shared.advice.linear[0].crowd_prior or (fewest or 0.0) >= 0.5, shared.advice
    unrelated = train_crowd(
        *_direction_people(np.random.default_rng(12), 30, 120)[:2],
        None,
        np.repeat(np.arange(30), 120),
    )
    assert unrelated.advice is not None and unrelated.advice.offsets is not None
    assert not any(c.crowd_prior for c in unrelated.advice.linear), unrelated.advice
    x_unrelated = _direction_people(np.random.default_rng(12), 30, 120)[0]
    largest = max(o or 0.0 for o in unrelated.advice.offsets)
    assert largest * float(unrelated.logit(x_unrelated).std()) < 0.1, unrelated.advice
    assert float(shared.logit(x_unrelated).std()) > 1.0  # the same bound would catch a real one


def test_an_option_that_uses_the_crowd_needs_a_gain_beyond_noise() -> None:
    rng = np.random.default_rng(23)
    owners = np.repeat(np.arange(30), 4)  # 30 people, 4 splits each
    safe = 0.8 + 0.05 * rng.normal(size=120)
    noisy = safe + 0.02 * rng.normal(size=120) + 0.002  # a little better on average: noise
    steady = safe + 0.01 + 0.002 * rng.normal(size=120)  # a smaller gain, but every time
    aucs = np.stack([safe, noisy], axis=1)
    assert noisy.mean() > safe.mean() and _best_beyond_noise(aucs, owners, safe=0) == 0
    aucs = np.stack([safe, noisy, steady], axis=1)
    assert _best_beyond_noise(aucs, owners, safe=0) == 2


def test_the_crowd_prior_is_advised_where_the_crowd_logit_ranks_held_out_votes_only() -> None:
    """Given each vote's crowd logit from the other half of the people, the advice keeps the
    crowd logit as the linear part's prior where it carries the person's taste, and turns it
    off where it is noise (a person's LOO would sometimes take noise for evidence)."""
    rng = np.random.default_rng(21)
    people, votes = 20, 80
    xs, ys, scores = [], [], []
    for _ in range(people):
        x = _unit(rng.normal(size=(votes, 24)))
        score = x @ rng.normal(size=24)
        ys.append(score > np.quantile(score, 0.7))
        xs.append(x)
        scores.append((score - score.mean()) / score.std())
    x, y, ids = np.vstack(xs), np.concatenate(ys), np.repeat(np.arange(people), votes)
    signal = learn_advice(x, y, np.ones(len(y)), ids, held_logit=2.0 * np.concatenate(scores))
    noise = learn_advice(x, y, np.ones(len(y)), ids, held_logit=3.0 * rng.normal(size=len(y)))
    assert signal is not None and noise is not None
    assert [c.crowd_prior for c in signal.linear] == [True] * len(signal.budgets), signal
    assert [c.crowd_prior for c in noise.linear] == [False] * len(noise.budgets), noise


@pytest.mark.parametrize("crowd_prior", [True, False])
def test_a_head_takes_the_crowd_prior_only_where_the_advice_allows_it(crowd_prior: bool) -> None:
    x, y, ids = _shared_people(np.random.default_rng(22), 21, 100)
    newcomer = ids == 20  # shares the crowd's taste, not in its votes
    crowd = train_crowd(x[~newcomer], y[~newcomer], None, ids[~newcomer])
    advice = Advice(
        (40,), (LinearChoice(False, 1.0, crowd_prior=crowd_prior),), ((1, 0, 0),), (20,)
    )
    crowd = CrowdModel(crowd.direction, crowd.platt_a, crowd.platt_c, crowd.meta, advice)
    gamma = train_head(x[newcomer][:40], y[newcomer][:40], crowd=crowd).info()["crowd_weight"]
    assert (gamma > 0) == crowd_prior, gamma


@pytest.mark.parametrize(
    "linear", [LinearChoice(False, 1.0), LinearChoice(True, 0.3), LinearChoice(False, 1.0, 0.5)]
)
@pytest.mark.parametrize("offset_carries_the_taste", [True, False])
def test_parts_without_the_crowd_prior_are_the_parts_fitted_without_it(
    linear: LinearChoice, offset_carries_the_taste: bool
) -> None:
    """The advice fits each split with the prior and derives the fit without it: that must be
    what fit_parts gives with crowd_prior False, whether or not the LOO gave the prior weight."""
    rng = np.random.default_rng(31)
    x = _unit(rng.normal(size=(40, 24))).astype(np.float32)
    score = x @ rng.normal(size=24)
    y = (score > np.quantile(score, 0.7)).astype(np.int64)
    offset = 3.0 * score if offset_carries_the_taste else 0.1 * rng.normal(size=40)
    sw = balanced_weights(y, np.ones(40))
    vectors = np.linalg.qr(rng.normal(size=(24, 4)))[0]
    metric = TasteMetric(np.array([8.0, 6.0, 4.0, 2.0]), vectors)
    with_prior = fit_parts(x, y, sw, None, offset, linear, metric)
    assert (with_prior.crowd_weight > 0) == offset_carries_the_taste, with_prior.crowd_weight
    derived = without_crowd_prior(with_prior, x, y, sw, linear, metric)
    direct = fit_parts(
        x, y, sw, None, offset, dataclasses.replace(linear, crowd_prior=False), metric
    )
    assert derived.crowd_weight == direct.crowd_weight == 0.0
    assert (derived.penalty, derived.salient) == (direct.penalty, direct.salient)
    for field in ("weights", "bias", "centroid", "kept", "vote_feats", "loo"):
        np.testing.assert_allclose(getattr(derived, field), getattr(direct, field), rtol=1e-9)
    np.testing.assert_allclose(derived.scores(x, offset), direct.scores(x, offset), rtol=1e-9)
