"""The per-person taste head: learning, edge cases, persistence, cold start."""

from pathlib import Path

import numpy as np
import pytest

from learner.head import DISLIKE, LIKE, SUPER_LIKE, TasteHead, cold_start_scores, train_head
from learner.metrics import roc_auc


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _toy(n: int, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Liked iff the first coordinate is positive; some likes are super likes."""
    rng = np.random.default_rng(seed)
    x = _unit(rng.normal(size=(n, d)))
    votes = np.where(x[:, 0] > 0, LIKE, DISLIKE).astype(np.int8)
    votes[(votes == LIKE) & (x[:, 1] > 0.3)] = SUPER_LIKE
    return x, votes


def _clusters(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Six clusters; liked: two of them. No single direction separates them from the rest."""
    centres = _unit(rng.normal(size=(6, 16)))
    cls = rng.integers(0, 6, n)
    x = _unit(centres[cls] + 0.15 * rng.normal(size=(n, 16)))
    return x, np.where(np.isin(cls, [0, 3]), LIKE, DISLIKE).astype(np.int8)


def _flip(votes: np.ndarray, flipped: np.ndarray) -> np.ndarray:
    """``votes`` with likes and dislikes swapped where ``flipped`` (an inconsistent person)."""
    out = votes.copy()
    out[flipped] = np.where(out[flipped] >= LIKE, DISLIKE, LIKE)
    return out


def test_learns_separable_toy_problem() -> None:
    x, votes = _toy(300)
    head = train_head(x[:100], votes[:100], unlabeled=x[100:200])
    auc = roc_auc(votes[200:] >= LIKE, head.predict(x[200:]))
    assert auc is not None and auc > 0.9


def test_learns_multi_cluster_taste() -> None:
    x, votes = _clusters(600, np.random.default_rng(1))
    head = train_head(x[:200], votes[:200], unlabeled=x[200:400])
    auc = roc_auc(votes[400:] >= LIKE, head.predict(x[400:]))
    assert auc is not None and auc > 0.9


def test_predictions_are_probabilities() -> None:
    x, votes = _toy(200)
    p = train_head(x[:150], votes[:150]).predict(x[150:])
    assert p.shape == (50,) and p.dtype == np.float64
    assert np.all((p >= 0) & (p <= 1))


@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("code", [DISLIKE, LIKE, SUPER_LIKE])
def test_one_sided_and_tiny_vote_sets_do_not_raise(n: int, code: int) -> None:
    x, _ = _toy(n + 10)
    votes = np.full(n, code, dtype=np.int8)
    for unlabeled in (None, x[n:]):
        p = train_head(x[:n], votes, unlabeled=unlabeled).predict(x[n:])
        assert p.shape == (10,) and np.all((p >= 0) & (p <= 1)) and np.all(np.isfinite(p))


def test_one_sided_likes_rank_by_similarity() -> None:
    x, _ = _toy(50)
    liked = x[:3]
    p = train_head(liked, np.full(3, LIKE, dtype=np.int8)).predict(np.vstack([liked[0], -liked[0]]))
    assert p[0] > p[1]


def test_mixed_tiny_vote_set() -> None:
    x, _ = _toy(20)
    votes = np.array([LIKE, DISLIKE, SUPER_LIKE], dtype=np.int8)
    p = train_head(x[:3], votes).predict(x)
    assert np.all((p >= 0) & (p <= 1))
    assert p[0] > p[1] and p[2] > p[1]


def test_save_load_round_trip(tmp_path: Path) -> None:
    x, votes = _toy(200)
    head = train_head(x[:120], votes[:120], unlabeled=x[120:160])
    path = tmp_path / "head.npz"
    head.save(path)
    loaded = TasteHead.load(path)
    np.testing.assert_array_equal(loaded.predict(x[160:]), head.predict(x[160:]))
    assert loaded.info == head.info
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_smoothed_head_file_is_float16_and_scores_exactly_as_trained(tmp_path: Path) -> None:
    import json

    x, votes = _toy(700)
    head = train_head(x[:300], votes[:300], unlabeled=x[300:600])  # 600 images: smoothed
    assert head.smooth_k > 0 and head.smooth_idx.shape == (300, head.smooth_k)
    path = tmp_path / "head.npz"
    head.save(path)
    with np.load(path, allow_pickle=False) as z:
        assert z["anchors"].dtype == np.float16  # half the space of float32 ...
        assert "vote_feats" not in z.files  # ... and the smoothed features are rebuilt
        stored = {k: z[k] for k in z.files}
    loaded = TasteHead.load(path)
    np.testing.assert_array_equal(loaded.vote_feats, head.vote_feats)
    np.testing.assert_array_equal(loaded.predict(x[600:]), head.predict(x[600:]))
    # A format-3 file (float32 anchors, the features themselves) still scores the same.
    import dataclasses

    meta = json.loads(str(stored.pop("meta")))
    meta["format_version"] = 3
    del meta["nearest_temperature"]  # format 3 was trained at 0.1 and did not store it
    del stored["smooth_idx"]
    stored["anchors"] = stored["anchors"].astype(np.float32)
    old = tmp_path / "old.npz"
    np.savez(old, meta=np.array(json.dumps(meta)), vote_feats=head.vote_feats, **stored)
    as_trained = dataclasses.replace(head, nearest_temperature=0.1)
    np.testing.assert_array_equal(TasteHead.load(old).predict(x[600:]), as_trained.predict(x[600:]))


def test_saved_file_loads_without_pickle(tmp_path: Path) -> None:
    x, votes = _toy(60)
    path = tmp_path / "head.npz"
    train_head(x, votes).save(path)
    with np.load(path, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)


def test_info_is_json_serialisable() -> None:
    import json

    x, votes = _toy(80)
    info = train_head(x, votes).info
    assert json.loads(json.dumps(info)) == info
    assert info["n_train"] == 80


def test_predict_single_image() -> None:
    x, votes = _toy(80)
    head = train_head(x[:60], votes[:60], unlabeled=x[60:])
    one = head.predict(x[:1])
    assert one.shape == (1,)
    assert one[0] == pytest.approx(head.predict(x[:5])[0])


def test_training_is_deterministic_for_a_seed() -> None:
    x, votes = _toy(120)
    a = train_head(x[:80], votes[:80], unlabeled=x[80:], seed=3).predict(x)
    b = train_head(x[:80], votes[:80], unlabeled=x[80:], seed=3).predict(x)
    np.testing.assert_array_equal(a, b)


def test_rejects_mismatched_inputs() -> None:
    x, votes = _toy(10)
    with pytest.raises(ValueError):
        train_head(x, votes[:5])


def test_cold_start_without_votes_is_one_half() -> None:
    x, _ = _toy(5)
    empty = np.zeros((0, 16), dtype=np.float32)
    np.testing.assert_array_equal(cold_start_scores(x, empty, empty), np.full(5, 0.5))


def test_cold_start_prefers_what_resembles_likes() -> None:
    x, _ = _toy(5)
    empty = np.zeros((0, 16), dtype=np.float32)
    liked, disliked = x[:1], x[1:2]
    for lk, dk in ((liked, disliked), (liked, empty), (empty, disliked)):
        p = cold_start_scores(x[:2], lk, dk)
        assert np.all((p >= 0) & (p <= 1))
        assert p[0] > p[1]


def test_head_mixes_centroid_and_nearest_vote_parts() -> None:
    x, votes = _toy(200)
    head = train_head(x[:120], votes[:120], unlabeled=x[120:160])
    info = head.info
    assert info["centroid_mix"] > 0 and info["nearest_mix"] > 0 and info["mix"] > 0
    assert head.vote_values.shape == (120,) and set(np.unique(head.vote_values)) == {-1.0, 1.0}
    # Without the nearest-vote part the scores change: it is really used.
    import dataclasses

    plain = dataclasses.replace(head, nearest_mix=0.0)
    assert not np.allclose(plain.predict(x[160:]), head.predict(x[160:]))


def test_version_1_head_file_still_loads(tmp_path: Path) -> None:
    import json

    x, votes = _toy(120)
    head = train_head(x[:80], votes[:80], unlabeled=x[80:100])
    path = tmp_path / "head.npz"
    head.save(path)
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        arrays = {k: z[k] for k in ("weights", "anchors", "anchor_scores")}
    meta["format_version"] = 1
    del meta["nearest_mix"]
    old = tmp_path / "old.npz"
    np.savez(old, meta=np.array(json.dumps(meta)), **arrays)
    loaded = TasteHead.load(old)
    assert loaded.nearest_mix == 0.0 and len(loaded.vote_values) == 0
    p = loaded.predict(x[100:])
    assert p.shape == (20,) and np.all((p >= 0) & (p <= 1))


def test_version_2_head_file_loads_without_smoothing(tmp_path: Path) -> None:
    import dataclasses
    import json

    x, votes = _toy(700)
    head = train_head(x[:300], votes[:300], unlabeled=x[300:600])  # 600 images: smoothed
    assert head.smooth_k > 0 and head.vote_feats.shape == (300, 16)
    # A person with only a few hundred images gets no smoothing (it only blurs there).
    assert train_head(x[:300], votes[:300], unlabeled=x[300:350]).smooth_k == 0
    path = tmp_path / "head.npz"
    head.save(path)
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        arrays = {k: z[k] for k in z.files if k != "meta"}
    meta["format_version"] = 2
    del meta["smooth_k"], meta["smooth_self"], meta["nearest_temperature"]
    old = tmp_path / "old.npz"
    np.savez(old, meta=np.array(json.dumps(meta)), **arrays)
    loaded = TasteHead.load(old)
    assert loaded.smooth_k == 0
    unsmoothed = dataclasses.replace(head, smooth_k=0, smooth_self=1.0, nearest_temperature=0.1)
    np.testing.assert_array_equal(loaded.predict(x[600:]), unsmoothed.predict(x[600:]))
    # And the smoothing is really used by a current head.
    assert not np.allclose(unsmoothed.predict(x[600:]), head.predict(x[600:]))


def test_smoothing_is_the_same_for_votes_and_new_images() -> None:
    from learner import head as h

    x, _ = _toy(300)
    lab = np.arange(100)
    anchors = np.vstack([x[:100], x[200:]])  # votes 100..199 are not anchors
    graph = h._Graph(anchors)
    feats, anchor_feats, near = h._smoothed_votes(x[:200], lab, anchors, graph)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0)
    # A vote beyond the anchors is smoothed exactly as a new image is at predict time.
    sims = x[100:200] @ anchors.T
    top = h._top(sims, h.SMOOTH_K)
    new = h._smoothed(x[100:200].astype(np.float64), h._neighbour_mean(anchors, top), h.SMOOTH_SELF)
    np.testing.assert_allclose(feats[100:], new, atol=1e-6)
    # An anchored vote averages its nearest *other* anchors, never itself.
    sims_a = anchors[:1] @ anchors.T
    sims_a[0, 0] = -np.inf
    own = h._smoothed(
        anchors[:1].astype(np.float64),
        h._neighbour_mean(anchors, h._top(sims_a, h.SMOOTH_K)),
        h.SMOOTH_SELF,
    )
    np.testing.assert_allclose(feats[0], own[0], atol=1e-6)
    np.testing.assert_allclose(anchor_feats[:100], feats[:100])
    # The nearest-vote features a head file rebuilds from the neighbours' indices are these.
    rebuilt = h._vote_features(anchors, near[:100], h.SMOOTH_SELF)
    np.testing.assert_allclose(rebuilt, feats[:100], atol=1e-6)


def test_vote_consistency_bayes() -> None:
    from learner.head import _vote_consistency

    z = np.array([0.0, 0.0, 5.0, 5.0, -5.0])
    y = np.array([1, 0, 1, 0, 0])
    q = _vote_consistency(z, y, 0.1)
    np.testing.assert_allclose(q[:2], 0.9)  # no evidence: the prior
    assert q[2] > 0.99 and q[4] > 0.99  # votes that agree with the held-out score
    assert q[3] < 0.1  # a dislike on what the other votes call liked: probably flipped


@pytest.mark.parametrize("max_anchors", [2000, 150])
def test_suspect_votes_are_about_as_many_as_flipped_ones(
    monkeypatch: pytest.MonkeyPatch, max_anchors: int
) -> None:
    from learner import head as h

    monkeypatch.setattr(h, "MAX_ANCHORS", max_anchors)  # 150: votes beyond the anchor cap
    # A taste of clusters, as the head is built for (on a single random direction in 16-d the
    # nearest votes say little, and since they weigh more without many unvoted images the
    # detector there flags only a third of the flips).
    x, votes = _clusters(700, np.random.default_rng(0))
    rng = np.random.default_rng(5)
    flipped = rng.random(400) < 0.1
    head = train_head(x[:400], _flip(votes[:400], flipped), unlabeled=x[400:600])
    n_flipped = int(flipped.sum())
    assert 0.5 * n_flipped <= int(head.info["suspect_votes"]) <= 1.5 * n_flipped
    auc = roc_auc(votes[600:] >= LIKE, head.predict(x[600:]))
    assert auc is not None and auc > 0.85


def test_vote_noise_follows_how_inconsistent_the_person_is() -> None:
    # The floor and ceiling of the score (eps) is the expected share of flipped votes: on
    # clusters, where a flipped vote stands out among its neighbours, a consistent person
    # gets sharper scores than one who flips a quarter of their votes.
    rng = np.random.default_rng(1)
    x, votes = _clusters(900, rng)
    noise = {}
    for rate in (0.02, 0.25):
        flipped = rng.random(400) < rate
        head = train_head(x[:400], _flip(votes[:400], flipped), unlabeled=x[400:700])
        noise[rate] = head.vote_noise
        assert head.vote_noise == head.info["vote_noise"]
        p = head.predict(x[700:])
        assert p.min() >= head.vote_noise - 1e-12 and p.max() <= 1 - head.vote_noise + 1e-12
    # Both sides of the 10% prior; the posterior mean shrinks a high rate towards it.
    assert noise[0.02] < 0.05 and 0.12 < noise[0.25] < 0.3


def test_votes_spread_further_over_the_graph_when_there_are_few() -> None:
    rng = np.random.default_rng(3)
    x, votes = _clusters(600, rng)
    alphas = [
        float(train_head(x[:n], votes[:n], unlabeled=x[n:]).info["alpha"])
        for n in (10, 20, 60, 200, 400)
    ]
    assert alphas[0] == alphas[1] == pytest.approx(0.97)
    assert alphas[1] > alphas[2] > alphas[3]
    assert alphas[3] == alphas[4] == pytest.approx(0.9)


def test_a_head_file_is_on_disk_before_it_is_renamed_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    x, votes = _toy(60)
    head = train_head(x, votes)
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
    votes = np.array([DISLIKE, DISLIKE, LIKE, LIKE, LIKE])
    p = train_head(x[:5], votes).predict(x)
    assert np.all(np.isfinite(p)) and np.all((p > 0) & (p < 1))


def test_a_format_4_file_keeps_the_nearest_vote_temperature_it_was_trained_with(
    tmp_path: Path,
) -> None:
    """Format 4 heads were trained with the nearest votes' softmax at 0.1 and did not store
    it; reading them at today's temperature would change their scores after an upgrade."""
    import dataclasses
    import json

    x, votes = _toy(300)
    head = train_head(x[:150], votes[:150], unlabeled=x[150:250])
    assert head.nearest_temperature == 0.05 and head.nearest_mix > 0
    path = tmp_path / "head.npz"
    head.save(path)
    assert TasteHead.load(path).nearest_temperature == head.nearest_temperature
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        arrays = {k: z[k] for k in z.files if k != "meta"}
    meta["format_version"] = 4
    del meta["nearest_temperature"]
    old = tmp_path / "old.npz"
    np.savez(old, meta=np.array(json.dumps(meta)), **arrays)
    loaded = TasteHead.load(old)
    assert loaded.nearest_temperature == 0.1
    as_trained = dataclasses.replace(head, nearest_temperature=0.1)
    np.testing.assert_array_equal(loaded.predict(x[250:]), as_trained.predict(x[250:]))
    assert not np.allclose(as_trained.predict(x[250:]), head.predict(x[250:]))  # it matters


def _platt_objective(a: float, c: float, s: np.ndarray, y: np.ndarray, eps: float) -> float:
    """Log-likelihood of the raw labels (the fit maximises it with Platt's smoothed targets
    and a weak prior on (a, c), so it may fall a little short of a grid's best)."""
    from learner.head import _sigmoid

    p = np.clip(eps + (1 - 2 * eps) * _sigmoid(a * s + c), 1e-12, 1 - 1e-12)
    return float(y @ np.log(p) + (1 - y) @ np.log(1 - p))


def test_platt_fit_does_not_overshoot_into_saturated_scores() -> None:
    """With a floor eps the likelihood is not concave, and plain Fisher steps sometimes
    jumped to an intercept where every score sat at eps (a person's scores all equal).
    On 60 small noisy held-out sets the fit must be about as good as the best point of a
    grid over slope and intercept."""
    from learner.head import MAX_PLATT_SLOPE, _fit_platt

    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(60):
        n = int(rng.integers(20, 80))
        y = (rng.random(n) < 0.3).astype(np.float64)
        scale = rng.choice([0.3, 1.0, 3.0])
        s = rng.standard_normal(n) * scale + y * rng.random() * 2
        s = s + rng.standard_t(2, n) * rng.random()  # heavy-tailed, as held-out mixes are
        eps = float(rng.choice([0.05, 0.1, 0.15, 0.2]))
        a, c = _fit_platt(s, y, eps)
        sd = float(np.std(s))
        grid = max(
            _platt_objective(slope / sd, intercept, s, y, eps)
            for slope in np.linspace(0.01, MAX_PLATT_SLOPE, 40)
            for intercept in np.linspace(-8, 8, 81)
        )
        worst = max(worst, grid - _platt_objective(a, c, s, y, eps))
    # Platt's smoothed targets and the weak prior cost up to ~2 nats here; the old fit's
    # divergences cost 6 and 62 nats in these draws.
    assert worst < 3.0


def test_platt_intercept_is_fitted_when_the_slope_is_held_at_its_bound() -> None:
    """Held-out scores that rank backwards hold the slope at its minimum; the intercept must
    still make the (constant) score the person's like rate. It used to stop where the joint
    step left it: a person told 71 % on everything with 33 % liked."""
    from learner.head import MIN_PLATT_SLOPE, _fit_platt, _sigmoid

    rng = np.random.default_rng(1)
    for _ in range(8):
        n = int(rng.integers(16, 60))
        y = (rng.random(n) < 0.33).astype(np.float64)
        s = rng.standard_normal(n) - 1.5 * y  # likes score lower: no positive slope fits
        eps = float(rng.choice([0.05, 0.1, 0.15]))
        a, c = _fit_platt(s, y, eps)
        assert a * np.std(s) == pytest.approx(MIN_PLATT_SLOPE)
        p = eps + (1 - 2 * eps) * _sigmoid(a * s + c)
        assert abs(float(p.mean()) - float(y.mean())) < 0.02


def test_graph_and_nearest_weights_follow_the_share_of_unvoted_images(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from learner import head as h

    x, votes = _clusters(400, np.random.default_rng(0))

    def fit(unvoted: int, **constants: float) -> TasteHead:
        with monkeypatch.context() as m:
            for name, value in constants.items():
                m.setattr(h, name, value)
            return train_head(x[:100], votes[:100], unlabeled=x[100 : 100 + unvoted])

    base = fit(0)
    # Votes only: the all-unvoted weights play no part, the votes-only ones do.
    same = fit(0, GRAPH_MIX=9.0, NEAREST_MIX=9.0)
    assert (same.mix, same.nearest_mix) == (base.mix, base.nearest_mix)
    heavier = fit(0, GRAPH_MIX_VOTES_ONLY=2.0, NEAREST_MIX_VOTES_ONLY=1.0)
    assert heavier.mix > base.mix and heavier.nearest_mix < base.nearest_mix
    # 300 unvoted of 400 images: three quarters of the way to the all-unvoted weights.
    mixed = fit(300)
    moved = fit(300, GRAPH_MIX=9.0)
    assert moved.mix > 2 * mixed.mix


def _one_subject(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``_clusters`` around one shared direction: every image shows the same kind of thing,
    so every cosine between two images is high (as among flowers)."""
    common = _unit(rng.normal(size=(1, 16)))
    x, votes = _clusters(n, rng)
    return _unit(2.0 * common + x), votes


def _mean_pairwise_cosine(x: np.ndarray) -> float:
    sims = x.astype(np.float64) @ x.T.astype(np.float64)
    n = len(x)
    return float((sims.sum() - np.trace(sims)) / (n * (n - 1)))


def test_centring_brings_one_subjects_images_to_the_target_cosine() -> None:
    from learner.head import CENTRE_COSINE, _centred, _centring_shift

    x, _ = _one_subject(400, np.random.default_rng(2))
    assert _mean_pairwise_cosine(x) > 0.8
    shift = _centring_shift(x)
    assert np.linalg.norm(shift) > 0.3
    assert _mean_pairwise_cosine(_centred(x, shift)) == pytest.approx(CENTRE_COSINE, abs=0.03)
    np.testing.assert_allclose(np.linalg.norm(_centred(x, shift), axis=1), 1.0, atol=1e-6)
    # Images that are already spread out are left as they are.
    spread, _ = _clusters(400, np.random.default_rng(2))
    assert _mean_pairwise_cosine(spread) < CENTRE_COSINE
    assert not _centring_shift(spread).any()
    assert _centred(spread, _centring_shift(spread)) is spread


def test_a_centred_head_scores_new_images_in_its_own_centring(tmp_path: Path) -> None:
    """The shift is fitted on the person's images, stored, and applied to every new image:
    a loaded head scores exactly as the trained one, and scoring without the shift would
    give other scores."""
    x, votes = _one_subject(600, np.random.default_rng(3))
    head = train_head(x[:200], votes[:200])
    assert head.shift.shape == (16,) and float(head.info["centring"]) > 0.3
    auc = roc_auc(votes[400:] >= LIKE, head.predict(x[400:]))
    assert auc is not None and auc > 0.9
    _assert_stored_and_applied(head, "shift", x[400:], tmp_path)


def _assert_stored_and_applied(head: TasteHead, name: str, x: np.ndarray, tmp_path: Path) -> None:
    """The head's array ``name`` survives a save and load bit for bit, the loaded head scores
    ``x`` exactly as the trained one, and scoring without the array gives other scores."""
    import dataclasses

    path = tmp_path / "head.npz"
    head.save(path)
    loaded = TasteHead.load(path)
    np.testing.assert_array_equal(getattr(loaded, name), getattr(head, name))
    np.testing.assert_array_equal(loaded.predict(x), head.predict(x))
    without = dataclasses.replace(head, **{name: np.zeros(0)})
    assert not np.allclose(without.predict(x), head.predict(x))


def test_a_format_5_file_scores_without_centring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Format 5 heads were trained on uncentred embeddings and have no shift stored."""
    from learner import head as head_module

    x, votes = _one_subject(400, np.random.default_rng(4))
    with monkeypatch.context() as patched:
        patched.setattr(head_module, "CENTRE_COSINE", 1.0)  # what format 5 did: no shift
        patched.setattr(head_module, "_dimension_scale", _no_scale)  # nor scaling
        head = train_head(x[:200], votes[:200])
    assert not head.shift.any()
    loaded = TasteHead.load(_older_file(head, tmp_path, 5, ("shift", "scale")))
    assert loaded.shift.size == 0 and loaded.scale.size == 0
    np.testing.assert_array_equal(loaded.predict(x[200:]), head.predict(x[200:]))


def _no_scale(images: np.ndarray) -> np.ndarray:
    return np.zeros(0)


def _older_file(head: TasteHead, tmp_path: Path, version: int, missing: tuple[str, ...]) -> Path:
    """``head`` saved, then rewritten as a format ``version`` file without the arrays
    ``missing`` (those that format did not have)."""
    import json

    path = tmp_path / "head.npz"
    head.save(path)
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        arrays = {k: z[k] for k in z.files if k != "meta" and k not in missing}
    meta["format_version"] = version
    old = tmp_path / f"format{version}.npz"
    np.savez(old, meta=np.array(json.dumps(meta)), **arrays)
    return old


def _nuisance_dimensions(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Six clusters in 14 dimensions (liked: two of them), and two more dimensions that vary
    several times as much across every image and say nothing about taste."""
    centres = rng.normal(size=(6, 16))
    centres[:, :2] = 0.0
    cls = rng.integers(0, 6, n)
    x = 0.3 * centres[cls] + 0.1 * rng.normal(size=(n, 16))
    x[:, :2] = rng.normal(size=(n, 2))
    return _unit(x), np.where(np.isin(cls, [0, 3]), LIKE, DISLIKE).astype(np.int8)


def test_dimension_scale_evens_out_the_variances_with_shrinkage() -> None:
    from learner.head import _dimension_scale, _scaled

    x, _ = _nuisance_dimensions(400, np.random.default_rng(5))
    var = x.var(axis=0)
    assert var[:2].min() > 5 * np.median(var[2:])
    scale = _dimension_scale(x)
    assert scale.mean() == pytest.approx(1.0)
    assert scale[:2].max() < scale[2:].min()  # the loud dimensions are damped
    scaled = _scaled(x, scale)
    np.testing.assert_allclose(np.linalg.norm(scaled, axis=1), 1.0, atol=1e-6)
    new_var = scaled.var(axis=0)
    # Evened out, not equalised: with shrinkage by the mean variance the loud dimensions
    # stay the loudest, at a fraction of their lead.
    lead_before = var[:2].min() / np.median(var[2:])
    lead_after = new_var[:2].min() / np.median(new_var[2:])
    assert 1.0 < lead_after < lead_before / 2
    # Images whose dimensions all vary alike are hardly changed; identical ones not at all.
    iso = _unit(np.random.default_rng(6).normal(size=(4000, 16)))
    np.testing.assert_allclose(_dimension_scale(iso), 1.0, atol=0.05)
    np.testing.assert_array_equal(_dimension_scale(np.repeat(iso[:1], 5, axis=0)), 1.0)


def test_a_head_trains_on_identical_images() -> None:
    """A broken encoder can embed every image alike; training must still give scores."""
    x = np.repeat(_unit(np.random.default_rng(9).normal(size=(1, 16))), 12, axis=0)
    votes = np.array([LIKE, DISLIKE] * 6, dtype=np.int8)
    scores = train_head(x, votes).predict(x)
    assert np.isfinite(scores).all() and ((scores > 0) & (scores < 1)).all()


def test_scaling_keeps_loud_dimensions_from_drowning_the_taste(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from learner import head as head_module

    x, votes = _nuisance_dimensions(600, np.random.default_rng(0))
    head = train_head(x[:30], votes[:30])
    auc = roc_auc(votes[200:] >= LIKE, head.predict(x[200:]))
    monkeypatch.setattr(head_module, "_dimension_scale", _no_scale)
    unscaled = train_head(x[:30], votes[:30])
    auc_unscaled = roc_auc(votes[200:] >= LIKE, unscaled.predict(x[200:]))
    assert auc is not None and auc_unscaled is not None
    assert auc > 0.99 and auc > auc_unscaled + 0.02


def test_a_scaled_head_scores_new_images_in_its_own_scale(tmp_path: Path) -> None:
    x, votes = _nuisance_dimensions(600, np.random.default_rng(7))
    head = train_head(x[:200], votes[:200])
    assert head.scale.shape == (16,) and float(head.info["scale_ratio"]) > 1.5
    _assert_stored_and_applied(head, "scale", x[200:], tmp_path)


def test_a_format_6_file_scores_without_scaling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Format 6 heads were centred but not scaled, and have no scale stored."""
    from learner import head as head_module

    x, votes = _one_subject(400, np.random.default_rng(8))
    with monkeypatch.context() as patched:
        patched.setattr(head_module, "_dimension_scale", _no_scale)
        head = train_head(x[:200], votes[:200])
    assert head.shift.any()
    loaded = TasteHead.load(_older_file(head, tmp_path, 6, ("scale",)))
    assert loaded.scale.size == 0 and loaded.shift.any()
    np.testing.assert_array_equal(loaded.predict(x[200:]), head.predict(x[200:]))


# ---- the fast paths of training, against their definitions ----


def _weighted_ridge(x: np.ndarray, t: np.ndarray, sw: np.ndarray, lam: float) -> np.ndarray:
    """argmin sum sw (t - [x, 1] beta)^2 + lam |beta|^2, solved directly."""
    z = np.hstack([x, np.ones((len(x), 1))])
    return np.linalg.solve(z.T @ (sw[:, None] * z) + lam * np.eye(z.shape[1]), z.T @ (sw * t))


@pytest.mark.parametrize("n", [6, 40])  # d = 8: the n x n kernel path, then the Gram path
def test_ridge_loo_predictions_are_refits_without_each_vote(n: int) -> None:
    from learner.head import _ridge_loo

    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 8)) * 0.2
    t = np.where(x[:, 0] + 0.3 * rng.normal(size=n) > 0, 1.0, -1.0)
    sw = rng.uniform(0.5, 2.0, n)
    lam, w, b, loo = _ridge_loo(x, t, sw)
    beta = _weighted_ridge(x, t, sw, lam)
    tol = 1e-8 if n <= 9 else 1e-4  # the Gram path multiplies in float32
    np.testing.assert_allclose(np.append(w, b), beta, atol=tol)
    for i in range(n):
        keep = np.arange(n) != i
        refit = _weighted_ridge(x[keep], t[keep], sw[keep], lam)
        assert loo[i] == pytest.approx(float(np.append(x[i], 1.0) @ refit), abs=tol)


def test_centroid_loo_leaves_each_vote_out_of_its_own_centroid() -> None:
    from learner.head import _centroid_loo

    rng = np.random.default_rng(3)
    x = _unit(rng.normal(size=(30, 6)) + 1.0).astype(np.float64)
    y = (rng.random(30) < 0.4).astype(np.int64)
    direction, loo = _centroid_loo(x, y)

    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v)

    np.testing.assert_allclose(direction, unit(x[y == 1].sum(0)) - unit(x[y == 0].sum(0)))
    for i in range(30):
        # cos to the liked centroid minus cos to the disliked, x_i left out of its own side's
        without = np.arange(30) != i
        liked = unit(x[(without if y[i] == 1 else True) & (y == 1)].sum(0))
        disliked = unit(x[(without if y[i] == 0 else True) & (y == 0)].sum(0))
        assert loo[i] == pytest.approx(x[i] @ liked - x[i] @ disliked, abs=1e-12)


@pytest.mark.parametrize("k", [0, 1, 3, 7])
def test_top_finds_each_rows_k_largest(k: int) -> None:
    from learner.head import _top

    sims = np.random.default_rng(k).normal(size=(5, 7))
    top = _top(sims, k)
    assert top.shape == (5, k)
    for row, chosen in zip(sims, top, strict=True):
        assert sorted(chosen.tolist()) == sorted(np.argsort(-row)[:k].tolist())


def test_dimension_scale_is_the_shrunk_inverse_spread_per_dimension() -> None:
    from learner.head import SCALE_SHRINK, _dimension_scale

    rng = np.random.default_rng(5)
    images = _unit(rng.normal(size=(200, 10)) * np.linspace(0.2, 3.0, 10) + 0.5)
    var = images.astype(np.float64).var(axis=0)
    expected = (var + SCALE_SHRINK * var.mean()) ** -0.5
    np.testing.assert_allclose(_dimension_scale(images), expected / expected.mean(), rtol=1e-9)
