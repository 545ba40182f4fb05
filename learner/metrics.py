"""Quality metrics for taste heads: ranking (ROC AUC) and calibration (ECE).

Pure numpy, so the bot can report holdout metrics without scikit-learn.
"""

from __future__ import annotations

import numpy as np


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve, or None when only one class is present.

    Computed as the Mann-Whitney U statistic with midranks, so a tie between a
    positive and a negative counts one half.
    """
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} entries but scores has {s.size}")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    return float(column_aucs(y, s[:, None])[0])


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over ``bins`` equal-width bins of [0, 1].

    ECE = sum over bins of (bin count / n) * |mean label - mean prob| in the bin.
    A probability of exactly 1.0 falls in the last bin. Returns 0.0 for no data.
    """
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} entries but probs has {p.size}")
    if bins < 1:
        raise ValueError("bins must be >= 1")
    if y.size == 0:
        return 0.0
    idx = np.clip(np.floor(p * bins).astype(np.int64), 0, bins - 1)
    sum_y = np.bincount(idx, weights=y, minlength=bins)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    # |sum_y - sum_p| / n per bin == (count / n) * |mean_y - mean_p|.
    return float(np.abs(sum_y - sum_p).sum() / y.size)


def column_aucs(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC of each column of ``scores`` (k, c) against 0/1 labels y, both classes present:
    the Mann-Whitney U statistic with midranks (ties count half)."""
    order = np.argsort(scores, axis=0, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=0)
    k = len(y)
    # Average ranks over ties: each sorted position's run of equal values, from its first
    # position (a running max of run starts) to its last (a running min of run ends, reversed).
    pos_index = np.arange(k)[:, None]
    new_run = np.ones_like(sorted_scores, dtype=bool)
    new_run[1:] = sorted_scores[1:] != sorted_scores[:-1]
    first = np.maximum.accumulate(np.where(new_run, pos_index, 0), axis=0)
    run_ends = np.ones_like(new_run)
    run_ends[:-1] = new_run[1:]
    last = np.minimum.accumulate(np.where(run_ends, pos_index, k - 1)[::-1], axis=0)[::-1]
    ranks = np.empty_like(scores, dtype=np.float64)
    np.put_along_axis(ranks, order, (first + last + 2) / 2.0, axis=0)
    pos = y.astype(bool)
    n_pos = int(pos.sum())
    out: np.ndarray = (ranks[pos].sum(axis=0) - n_pos * (n_pos + 1) / 2.0) / (n_pos * (k - n_pos))
    return out
