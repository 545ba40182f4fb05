"""The per-person taste head: learning, the per-person blend, the crowd prior, persistence."""

import json
from pathlib import Path

import numpy as np
import pytest

from learner.crowd import CrowdModel, train_crowd
from learner.head import (
    FORMAT_VERSION,
    SUPER_LIKE_WEIGHT,
    TasteHead,
    train_head,
)
from learner.metrics import roc_auc
from learner.prior import cold_start_scores


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _toy(n: int, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Liked iff the first coordinate is positive; some likes are super likes."""
    rng = np.random.default_rng(seed)
    x = _unit(rng.normal(size=(n, d)))
    liked = x[:, 0] > 0
    weights = np.where(liked & (x[:, 1] > 0.3), SUPER_LIKE_WEIGHT, 1.0)
    return x, liked, weights


def _clusters(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Six clusters; liked: two of them. No single direction separates them from the rest."""
    centres = _unit(rng.normal(size=(6, 16)))
    cls = rng.integers(0, 6, n)
    x = _unit(centres[cls] + 0.15 * rng.normal(size=(n, 16)))
    return x, np.isin(cls, [0, 3])


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    a = roc_auc(y, s)
    assert a is not None
    return a


def _direction_taste(
    n: int, rng: np.random.Generator, d: int = 24
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A taste along one direction of anisotropic images (a few loud dimensions, as CLIP's):
    the direction mixes loud and quiet dimensions, so the centroid of the likes (pulled
    towards the loud ones) is not the best boundary, and a regularised linear model is."""
    spread = np.where(np.arange(d) < 4, 3.0, 0.5)
    x = _unit(rng.normal(size=(n, d)) * spread + 0.3)
    w = np.zeros(d)
    w[0], w[5], w[6] = 1.0, 3.0, -3.0
    score = (x - x.mean(axis=0)) @ w
    return x, score > np.quantile(score, 0.7), w


def test_learns_separable_toy_problem() -> None:
    x, liked, w = _toy(300)
    head = train_head(x[:100], liked[:100], w[:100], unlabeled=x[100:200])
    assert _auc(liked[200:], head.predict(x[200:])) > 0.9


def test_learns_multi_cluster_taste() -> None:
    x, liked = _clusters(600, np.random.default_rng(1))
    head = train_head(x[:200], liked[:200])
    assert _auc(liked[400:], head.predict(x[400:])) > 0.9


def test_a_direction_taste_gets_the_linear_model_and_beats_the_centroid() -> None:
    rng = np.random.default_rng(4)
    x, liked, _ = _direction_taste(2000, rng)
    train, test = slice(0, 200), slice(1000, 2000)
    head = train_head(x[train], liked[train])
    c = x[train][liked[train]].mean(0) / np.linalg.norm(x[train][liked[train]].mean(0))
    c -= x[train][~liked[train]].mean(0) / np.linalg.norm(x[train][~liked[train]].mean(0))
    centroid_auc = _auc(liked[test], x[test] @ c)
    assert _auc(liked[test], head.predict(x[test])) > centroid_auc + 0.02
    info = head.info()
    assert info["blend_linear"] > max(info["blend_centroid"], info["blend_nearest"])


def test_a_cluster_taste_leans_on_the_nearest_votes() -> None:
    x, liked = _clusters(400, np.random.default_rng(2))
    info = train_head(x[:300], liked[:300]).info()
    assert info["blend_nearest"] > info["blend_linear"]


def test_predictions_are_probabilities() -> None:
    x, liked, _ = _toy(200)
    p = train_head(x[:150], liked[:150]).predict(x[150:])
    assert p.shape == (50,) and p.dtype == np.float64
    assert np.all((p > 0) & (p < 1))


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5])
@pytest.mark.parametrize("side", [False, True])
def test_one_sided_and_tiny_vote_sets_do_not_raise(n: int, side: bool) -> None:
    x, _, _ = _toy(n + 10)
    crowd = _crowd(np.random.default_rng(0), 16)
    for unlabeled in (None, x[n:]):
        for c in (None, crowd):
            p = train_head(x[:n], np.full(n, side), unlabeled=unlabeled, crowd=c).predict(x[n:])
            assert p.shape == (10,) and np.all((p >= 0) & (p <= 1)) and np.all(np.isfinite(p))


def test_a_newcomer_is_scored_by_the_crowd_model_or_one_half_without_one() -> None:
    rng = np.random.default_rng(1)
    crowd = _crowd(rng, 16)
    x = _unit(rng.normal(size=(50, 16)))
    newcomer = train_head(np.zeros((0, 16), np.float32), np.zeros(0, bool), crowd=crowd)
    np.testing.assert_allclose(newcomer.predict(x), crowd.predict(x), rtol=1e-12)
    assert newcomer.info()["kind"] == "crowd model" and newcomer.info()["crowd_weight"] == 1.0
    alone = train_head(np.zeros((0, 16), np.float32), np.zeros(0, bool))
    np.testing.assert_array_equal(alone.predict(x), np.full(50, 0.5))
    assert alone.info()["crowd_weight"] == 0.0


def test_one_sided_likes_rank_by_similarity() -> None:
    x, _, _ = _toy(50)
    liked = x[:3]
    p = train_head(liked, np.ones(3, bool)).predict(np.vstack([liked[0], -liked[0]]))
    assert p[0] > p[1]


def test_save_load_round_trip_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from learner import head_parts

    monkeypatch.setattr(head_parts, "MAX_NEAREST", 50)  # the nearest votes are a sample
    rng = np.random.default_rng(3)
    x, liked, w = _toy(300)
    crowd = _crowd(rng, 16)
    head = train_head(x[:120], liked[:120], w[:120], unlabeled=x[120:160], crowd=crowd)
    assert head.vote_feats.shape == (50, 16)
    path = tmp_path / "head.npz"
    head.save(path)
    loaded = TasteHead.load(path)
    np.testing.assert_array_equal(loaded.predict(x[160:]), head.predict(x[160:]))
    assert loaded.info() == head.info()
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind
    with np.load(path, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
        assert z["vote_feats"].dtype == np.float16


def test_an_older_head_file_is_refused_with_a_reason(tmp_path: Path) -> None:
    x, liked, _ = _toy(60)
    path = tmp_path / "head.npz"
    train_head(x, liked).save(path)
    with np.load(path, allow_pickle=False) as z:
        stored = {k: z[k] for k in z.files}
    meta = json.loads(str(stored.pop("meta")))
    meta["format_version"] = 7
    old = tmp_path / "old.npz"
    np.savez(old, meta=np.array(json.dumps(meta)), **stored)
    with pytest.raises(ValueError, match="format 7"):
        TasteHead.load(old)
    np.savez(tmp_path / "junk.npz", weights=np.zeros(3))
    with pytest.raises(ValueError, match="not a head file"):
        TasteHead.load(tmp_path / "junk.npz")
    assert FORMAT_VERSION == 8


def test_info_is_json_serialisable_and_says_how_much_the_crowd_counts() -> None:
    x, liked, _ = _toy(80)
    info = train_head(x, liked, crowd=_crowd(np.random.default_rng(0), 16)).info()
    assert json.loads(json.dumps(info)) == info
    assert info["n_train"] == 80 and "crowd_weight" in info
    blend = [info[f"blend_{p}"] for p in ("linear", "centroid", "nearest")]
    assert sum(blend) == pytest.approx(1.0) and min(blend) >= 0


def test_predict_single_image() -> None:
    x, liked, _ = _toy(80)
    head = train_head(x[:60], liked[:60], unlabeled=x[60:])
    one = head.predict(x[:1])
    assert one.shape == (1,)
    assert one[0] == pytest.approx(head.predict(x[:5])[0])
    assert head.predict(x[0]).shape == (1,)


def test_training_is_deterministic_for_a_seed() -> None:
    x, liked, _ = _toy(120)
    a = train_head(x[:80], liked[:80], unlabeled=x[80:], seed=3).predict(x)
    b = train_head(x[:80], liked[:80], unlabeled=x[80:], seed=3).predict(x)
    np.testing.assert_array_equal(a, b)


def test_rejects_mismatched_inputs() -> None:
    x, liked, _ = _toy(10)
    with pytest.raises(ValueError):
        train_head(x, liked[:5])
    with pytest.raises(ValueError):
        train_head(x, liked, np.ones(5))
    with pytest.raises(ValueError):
        train_head(x, liked, np.zeros(10))  # a vote of weight 0 is no vote


def test_super_likes_weigh_more() -> None:
    """A super-liked image is fitted harder: its score rises against the other likes'."""
    rng = np.random.default_rng(12)
    x = _unit(rng.normal(size=(30, 16)))
    liked = np.arange(30) % 2 == 0
    weights = np.ones(30)
    weights[[0, 2, 4]] = SUPER_LIKE_WEIGHT
    plain = train_head(x, liked).predict(x)
    weighted = train_head(x, liked, weights).predict(x)
    assert weighted[[0, 2, 4]].mean() - weighted[liked].mean() > (
        plain[[0, 2, 4]].mean() - plain[liked].mean()
    )


def test_cold_start_without_votes_is_one_half() -> None:
    x, _, _ = _toy(5)
    empty = np.zeros((0, 16), dtype=np.float32)
    np.testing.assert_array_equal(cold_start_scores(x, empty, empty), np.full(5, 0.5))


def test_cold_start_prefers_what_resembles_likes() -> None:
    x, _, _ = _toy(5)
    empty = np.zeros((0, 16), dtype=np.float32)
    liked, disliked = x[:1], x[1:2]
    for lk, dk in ((liked, disliked), (liked, empty), (empty, disliked)):
        p = cold_start_scores(x[:2], lk, dk)
        assert np.all((p >= 0) & (p <= 1))
        assert p[0] > p[1]


def test_a_head_file_is_on_disk_before_it_is_renamed_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    x, liked, _ = _toy(60)
    head = train_head(x, liked)
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync file")
        real_fsync(fd)

    def replace(src: str, dst: Path) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    head.save(tmp_path / "head.npz")
    assert events == ["fsync file", "rename", "fsync dir"]


def test_a_side_whose_votes_cancel_out_still_trains() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 16)).astype(np.float32)
    x[1] = -x[0]  # two dislikes that are exact opposites: their sum is 0
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    liked = np.array([False, False, True, True, True])
    p = train_head(x[:5], liked).predict(x)
    assert np.all(np.isfinite(p)) and np.all((p > 0) & (p < 1))


def test_a_head_trains_on_identical_images() -> None:
    """A broken encoder can embed every image alike; training must still give scores."""
    x = np.repeat(_unit(np.random.default_rng(9).normal(size=(1, 16))), 12, axis=0)
    scores = train_head(x, np.array([True, False] * 6)).predict(x)
    assert np.isfinite(scores).all() and ((scores > 0) & (scores < 1)).all()


# ---- the crowd prior ----


def _crowd(
    rng: np.random.Generator, d: int, direction: np.ndarray | None = None, people: int = 40
) -> CrowdModel:
    """A crowd model from ``people`` who all like images along ``direction`` (default: the
    second coordinate), 60 noisy votes each."""
    v = np.eye(d)[1] if direction is None else direction
    x = _unit(rng.normal(size=(people * 60, d)))
    liked = x @ v + 0.2 * rng.normal(size=len(x)) > 0
    return train_crowd(x, liked, None, np.repeat(np.arange(people), 60))


def _shared_taste_person(
    rng: np.random.Generator, d: int, share: float, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Likes along share * (the crowd's direction) + (1 - share) * (a direction of their own)."""
    x = _unit(rng.normal(size=(n, d)))
    own = np.eye(d)[2]
    return x, x @ (share * np.eye(d)[1] + (1 - share) * own) > 0


def test_a_person_opposite_to_the_crowd_is_not_pulled_towards_it() -> None:
    rng = np.random.default_rng(5)
    d = 16
    crowd = _crowd(rng, d)
    x = _unit(rng.normal(size=(600, d)))
    opposite = x @ -np.eye(d)[1] > 0
    # 20 and 30 votes: the crowd's advice offers an offset there (its people have 60 votes)
    assert crowd.advice is not None and crowd.advice.budgets == (10, 20)
    for n in (20, 30, 60):
        head = train_head(x[:n], opposite[:n], crowd=crowd)
        assert head.info()["crowd_weight"] == 0.0 and head.info()["crowd_offset"] == 0.0, n
    assert _auc(opposite[300:], head.predict(x[300:])) > 0.85
    # ... while a person who shares the crowd's taste leans on it: in the ridge's prior, in the
    # offset or in the crowd's taste metric (which serves the opposite person too: it has no
    # sign)
    xs, shared = _shared_taste_person(rng, d, 0.7, 600)
    for n in (20, 30, 60):
        info = train_head(xs[:n], shared[:n], crowd=crowd).info()
        assert info["crowd_weight"] > 0.1 or info["crowd_offset"] > 0.0 or info["taste_metric"], n


def test_the_crowd_prior_helps_a_person_who_shares_the_crowds_taste() -> None:
    rng = np.random.default_rng(6)
    d = 32
    crowd = _crowd(rng, d)
    with_crowd, without = [], []
    for seed in range(5):
        x, liked = _shared_taste_person(np.random.default_rng(seed), d, 0.7, 1000)
        test = slice(500, 1000)
        with_crowd.append(
            _auc(liked[test], train_head(x[:15], liked[:15], crowd=crowd).predict(x[test]))
        )
        without.append(_auc(liked[test], train_head(x[:15], liked[:15]).predict(x[test])))
    assert np.mean(with_crowd) > np.mean(without) + 0.05


def test_a_head_scores_without_the_crowd_model_it_was_trained_with(tmp_path: Path) -> None:
    """The crowd's part is folded into the head: a saved head needs no crowd model to score."""
    rng = np.random.default_rng(7)
    crowd = _crowd(rng, 16)
    x, liked = _shared_taste_person(rng, 16, 0.8, 300)
    head = train_head(x[:40], liked[:40], crowd=crowd)
    assert head.info()["crowd_weight"] > 0 or head.info()["crowd_offset"] > 0
    head.save(tmp_path / "h.npz")
    np.testing.assert_array_equal(TasteHead.load(tmp_path / "h.npz").predict(x), head.predict(x))


# ---- the fast paths of training, against their definitions ----


def _weighted_ridge(x: np.ndarray, t: np.ndarray, sw: np.ndarray, lam: float) -> np.ndarray:
    """argmin sum sw (t - [x, 1] beta)^2 + lam |beta|^2, solved directly."""
    z = np.hstack([x, np.ones((len(x), 1))])
    return np.linalg.solve(z.T @ (sw[:, None] * z) + lam * np.eye(z.shape[1]), z.T @ (sw * t))


@pytest.mark.parametrize("n", [6, 40])  # d = 8: the n x n kernel path, then the Gram path
def test_ridge_loo_predictions_are_refits_without_each_vote(n: int) -> None:
    from learner.head_fit import _ridge_loo

    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 8)) * 0.2
    t = np.where(x[:, 0] + 0.3 * rng.normal(size=n) > 0, 1.0, -1.0)
    sw = rng.uniform(0.5, 2.0, n)
    offset = 2.0 * x[:, 0] + 0.5 * rng.normal(size=n)
    for off in (None, offset):
        lam, gamma, w, b, loo = _ridge_loo(x, t, sw, off)
        o = np.zeros(n) if off is None else off
        target = t - gamma * o
        beta = _weighted_ridge(x, target, sw, lam)
        tol = 1e-8 if n <= 9 else 1e-4  # the Gram path multiplies in float32
        np.testing.assert_allclose(np.append(w, b), beta, atol=tol)
        for i in range(n):
            keep = np.arange(n) != i
            refit = _weighted_ridge(x[keep], target[keep], sw[keep], lam)
            expected = gamma * o[i] + float(np.append(x[i], 1.0) @ refit)
            assert loo[i] == pytest.approx(expected, abs=tol)
    assert _ridge_loo(x, t, sw, None)[1] == 0.0


def test_ridge_loo_takes_the_crowd_only_where_it_explains_the_votes() -> None:
    from learner.head_fit import CROWD_STRENGTHS, _ridge_loo

    rng = np.random.default_rng(11)
    x = rng.normal(size=(24, 40)) * 0.2  # too few votes for the ridge alone
    t = np.where(x[:, 1] + 0.1 * rng.normal(size=24) > 0, 1.0, -1.0)
    sw = np.ones(24)
    helpful = _ridge_loo(x, t, sw, 10.0 * x[:, 1])[1]
    assert helpful in CROWD_STRENGTHS and helpful > 0
    assert _ridge_loo(x, t, sw, -10.0 * x[:, 1])[1] == 0.0  # the crowd says the opposite
    assert _ridge_loo(x, t, sw, 2.0 * rng.normal(size=24))[1] == 0.0  # the crowd is noise


def test_centroid_loo_leaves_each_vote_out_of_its_own_centroid() -> None:
    from learner.head_fit import _centroid_loo

    rng = np.random.default_rng(3)
    x = _unit(rng.normal(size=(30, 6)) + 1.0).astype(np.float64)
    y = (rng.random(30) < 0.4).astype(np.int64)
    direction, loo = _centroid_loo(x, y)

    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v)

    np.testing.assert_allclose(direction, unit(x[y == 1].sum(0)) - unit(x[y == 0].sum(0)))
    for i in range(30):
        without = np.arange(30) != i
        liked = unit(x[(without if y[i] == 1 else True) & (y == 1)].sum(0))
        disliked = unit(x[(without if y[i] == 0 else True) & (y == 0)].sum(0))
        assert loo[i] == pytest.approx(x[i] @ liked - x[i] @ disliked, abs=1e-12)


@pytest.mark.parametrize("k", [0, 1, 3, 7])
def test_top_finds_each_rows_k_largest(k: int) -> None:
    from learner.head_fit import _top

    sims = np.random.default_rng(k).normal(size=(5, 7))
    top = _top(sims, k)
    assert top.shape == (5, k)
    for row, chosen in zip(sims, top, strict=True):
        assert sorted(chosen.tolist()) == sorted(np.argsort(-row)[:k].tolist())


def test_platt_slope_never_turns_the_ranking_upside_down() -> None:
    """LOO scores of few votes can anti-correlate with them; the slope stays positive."""
    from learner.head_fit import MIN_PLATT_SLOPE, _fit_platt

    s = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([1.0, 1.0, 0.0, 0.0])  # higher score, fewer likes
    a, _, _ = _fit_platt(s, y)
    assert a == pytest.approx(MIN_PLATT_SLOPE / np.std(s))


def test_dimension_scale_is_the_shrunk_inverse_spread_per_dimension() -> None:
    from learner.head_fit import SCALE_SHRINK, _dimension_scale

    rng = np.random.default_rng(5)
    images = _unit(rng.normal(size=(200, 10)) * np.linspace(0.2, 3.0, 10) + 0.5)
    var = images.astype(np.float64).var(axis=0)
    expected = (var + SCALE_SHRINK * var.mean()) ** -0.5
    np.testing.assert_allclose(_dimension_scale(images), expected / expected.mean(), rtol=1e-9)


def test_centring_brings_one_subjects_images_to_the_target_cosine() -> None:
    from learner.head_fit import CENTRE_COSINE, _centring_shift, _f_space

    rng = np.random.default_rng(2)
    x = _unit(rng.normal(size=(1, 16)) * 3 + rng.normal(size=(400, 16)))
    sims = x.astype(np.float64) @ x.T
    assert (sims.sum() - 400) / (400 * 399) > 0.8
    shift = _centring_shift(x)
    c = _f_space(x, shift, np.ones(16)).astype(np.float64)
    sims = c @ c.T
    assert (sims.sum() - np.trace(sims)) / (400 * 399) == pytest.approx(CENTRE_COSINE, abs=0.03)
    spread, _ = _clusters(400, rng)
    assert not _centring_shift(spread).any()  # already spread out: left as it is
