"""The crowd's taste metric: where people's tastes lie in CLIP space, learnt from their votes
(aggregate directions only, no one's votes or embeddings), and the stretch that makes a ridge
fit in it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The metric keeps its largest directions only (a priori): applying it costs votes x d x rank
# per fit, too slow at full rank with hundreds of people; 50-person crowds never reach it.
MAX_METRIC_RANK = 64


@dataclass(frozen=True, eq=False)  # arrays: compare them with numpy, not ==
class TasteMetric:
    """Where people's tastes lie in CLIP space: C = vectors diag(values) vectors^T, the mean
    outer product of people's unit like-minus-dislike directions, scaled to trace d (so the
    identity is its no-information value). Ridge on x stretched by sqrt(alpha C + (1 - alpha) I)
    is ridge with that prior covariance on the weights: the directions other people's
    tastes lie along are cheap to learn, the rest dear."""

    values: np.ndarray  # (r,) eigenvalues of C (its other d - r are 0)
    vectors: np.ndarray  # (d, r) orthonormal eigenvectors

    def stretch(self, x: np.ndarray, alpha: float) -> np.ndarray:
        """x @ sqrt(alpha C + (1 - alpha) I), without forming the d x d matrix."""
        base = np.sqrt(1.0 - alpha)
        gain = np.sqrt(alpha * self.values + 1.0 - alpha) - base
        x64 = np.asarray(x, dtype=np.float64)
        out: np.ndarray = base * x64 + ((x64 @ self.vectors) * gain) @ self.vectors.T
        return out


def taste_metric(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, people: list[np.ndarray], min_people: int
) -> TasteMetric | None:
    """The taste metric of the people whose votes are the rows ``people`` (one index array
    each): the mean outer product of their unit like-minus-dislike directions (weighted mean
    of the liked images minus that of the disliked), scaled to trace d. None with fewer than
    ``min_people`` people who have both likes and dislikes."""
    directions = []
    for rows in people:
        liked = y[rows].astype(bool)
        if liked.all() or not liked.any():
            continue
        xr, wr = x[rows].astype(np.float64), w[rows]
        diff = (wr[liked] @ xr[liked]) / wr[liked].sum() - (wr[~liked] @ xr[~liked]) / wr[
            ~liked
        ].sum()
        norm = float(np.linalg.norm(diff))
        if norm > 0:
            directions.append(diff / norm)
    if len(directions) < min_people:
        return None
    dirs = np.array(directions)
    p, d = dirs.shape
    if p <= d:  # the eigenpairs of dirs^T dirs / p from the p x p Gram matrix
        ev, u = np.linalg.eigh(dirs @ dirs.T / p)
        keep = ev > 1e-10 * ev.max()
        vectors = dirs.T @ u[:, keep] / np.sqrt(p * ev[keep])
        ev = ev[keep]
    else:
        ev, vectors = np.linalg.eigh(dirs.T @ dirs / p)
        ev = np.maximum(ev, 0.0)
    values = ev * d / float(ev.sum())
    top = np.argsort(-values)[:MAX_METRIC_RANK]  # the rest count as directions no one had
    return TasteMetric(values[top], vectors[:, top])
