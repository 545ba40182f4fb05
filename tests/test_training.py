"""learner.training on liked / weight arrays: holdout, training, evaluation, promotion."""

import numpy as np

from learner.crowd import train_crowd
from learner.head import SUPER_LIKE_WEIGHT, train_head
from learner.training import evaluate, is_holdout, train_and_compare, trainable


def _votes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    liked = x[:, 0] > 0
    weights = np.where(liked & (x[:, 1] > 0.3), SUPER_LIKE_WEIGHT, 1.0)
    return np.arange(1, n + 1), x, liked, weights


def test_train_and_compare_holds_out_by_submission_id_and_promotes_a_better_head() -> None:
    ids, x, liked, weights = _votes(200)
    held = np.array([is_holdout(int(s)) for s in ids])
    assert 0.1 < held.mean() < 0.3
    result = train_and_compare(ids, x, liked, weights, None, None)
    assert result.train_size == int((~held).sum()) and result.promote
    assert result.candidate.size == int(held.sum()) and result.candidate.auc is not None
    assert result.candidate.auc > 0.9
    # an active head that ranks the other way round loses to the new one ...
    worse = train_head(x[~held], ~liked[~held])
    again = train_and_compare(ids, x, liked, weights, None, worse)
    assert again.promote and again.active is not None and again.active.auc is not None
    assert again.active.auc < 0.2
    # ... and a candidate is not promoted over an active head that ranks the held-out votes
    # better (here: one that has seen them)
    seen_all = train_head(x, liked)
    kept = train_and_compare(ids[:40], x[:40], liked[:40], None, None, seen_all)
    assert kept.candidate.auc is not None and kept.active is not None
    assert kept.active.auc is not None and kept.candidate.auc < kept.active.auc
    assert not kept.promote


def test_train_and_compare_passes_the_crowd_model_to_the_head() -> None:
    ids, x, liked, _ = _votes(60, seed=1)
    crowd_x = _votes(400, seed=2)[1]
    crowd = train_crowd(crowd_x, crowd_x[:, 0] > 0, None, np.repeat(np.arange(8), 50))
    result = train_and_compare(ids, x, liked, None, None, None, crowd=crowd)
    info = result.head.info()  # the crowd enters as the ridge's prior, an offset or its metric
    assert info["crowd_weight"] > 0 or info["crowd_offset"] > 0 or info["taste_metric"] > 0


def test_evaluate_and_trainable_read_liked_arrays() -> None:
    ids, x, liked, _ = _votes(100)
    head = train_head(x, liked)
    m = evaluate(head, x[:30], liked[:30])
    assert m.size == 30 and m.auc is not None and m.auc > 0.9 and m.ece is not None
    assert evaluate(head, x[:0], liked[:0]).auc is None
    assert evaluate(head, x[:5], np.ones(5, bool)).auc is None  # one kind: cannot rank
    assert trainable(ids, liked, 10) is None
    assert "at least 200" in (trainable(ids, liked, 200) or "")
    assert "like and one dislike" in (trainable(ids, np.ones(100, bool), 10) or "")
