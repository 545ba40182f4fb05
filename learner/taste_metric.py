"""The crowd's metrics: where people's tastes lie in CLIP space, learnt from their votes, and
where the images they voted on vary (aggregate directions only, no one's votes or embeddings);
and the stretch that makes a ridge fit in either."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The metric keeps its largest directions only (a priori): applying it costs votes x d x rank
# per fit, too slow at full rank with hundreds of people; 50-person crowds never reach it.
MAX_METRIC_RANK = 64
IMAGE_BLOCK = 4096  # rows of images centred at a time for the image metric


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


def taste_directions(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, people: list[np.ndarray]
) -> list[np.ndarray | None]:
    """Each person's unit like-minus-dislike direction (the weighted mean of their liked images
    minus that of their disliked), None for a person with likes or dislikes only."""
    out: list[np.ndarray | None] = []
    for rows in people:
        liked = y[rows].astype(bool)
        if liked.all() or not liked.any():
            out.append(None)
            continue
        xr, wr = x[rows].astype(np.float64), w[rows]
        diff = (wr[liked] @ xr[liked]) / wr[liked].sum() - (wr[~liked] @ xr[~liked]) / wr[
            ~liked
        ].sum()
        norm = float(np.linalg.norm(diff))
        out.append(diff / norm if norm > 0 else None)
    return out


def taste_metric(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, people: list[np.ndarray], min_people: int
) -> TasteMetric | None:
    """The taste metric of the people whose votes are the rows ``people`` (one index array
    each): ``metric_of`` their ``taste_directions``."""
    directions = [v for v in taste_directions(x, y, w, people) if v is not None]
    return metric_of(directions, min_people)


def metric_of(directions: list[np.ndarray], min_people: int) -> TasteMetric | None:
    """The mean outer product of these unit directions, scaled to trace d; None with fewer
    than ``min_people`` of them."""
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
    return _top(ev * d / float(ev.sum()), vectors)


def image_metric(x: np.ndarray) -> TasteMetric:
    """Where images vary: the covariance of the rows of ``x`` (every vote's image), its top
    MAX_METRIC_RANK eigenpairs scaled to trace d. A ridge in it has the prior that a taste
    follows the directions in which the bot's images differ most (the salient stretch's prior,
    with the variances of thousands of images rather than of one person's few)."""
    d = x.shape[1]
    mean = x.mean(axis=0, dtype=np.float64)
    scatter = np.zeros((d, d))
    # float64 a block at a time: no (n, d) copy of every vote's image, and the same metric
    # however many threads the product runs on (float32 sums differ with their order)
    for start in range(0, len(x), IMAGE_BLOCK):
        centred = np.asarray(x[start : start + IMAGE_BLOCK], dtype=np.float64) - mean
        scatter += centred.T @ centred
    ev, vectors = np.linalg.eigh(scatter)
    top = _top(np.maximum(ev, 0.0), vectors)
    total = float(top.values.sum())
    if total <= 0:
        return TasteMetric(np.zeros(0), np.zeros((d, 0)))
    return TasteMetric(top.values * d / total, top.vectors)


def metric_without(metric: TasteMetric, direction: np.ndarray, people: int) -> TasteMetric:
    """The metric of ``people`` directions with one of them, ``direction``, taken out: the
    metric everyone else's votes give. A rank-one downdate in the span of the metric's vectors
    and the direction, so it costs a (rank + 1)^2 eigenproblem, not the whole metric again;
    exact while the metric kept every direction (rank <= MAX_METRIC_RANK)."""
    d = len(direction)
    inside = metric.vectors.T @ direction
    rest = direction - metric.vectors @ inside
    norm = float(np.linalg.norm(rest))
    basis, coords = metric.vectors, inside
    if norm > 1e-9:
        basis = np.hstack([metric.vectors, (rest / norm)[:, None]])
        coords = np.append(inside, norm)
    values = np.zeros(basis.shape[1])
    values[: len(metric.values)] = metric.values
    # C = (d / people) sum of outer products; without one: (people C - d u u^T) / (people - 1)
    small = (people * np.diag(values) - d * np.outer(coords, coords)) / (people - 1)
    ev, u = np.linalg.eigh(small)
    keep = ev > 1e-10 * max(float(ev.max()), 1e-300)
    return _top(ev[keep], basis @ u[:, keep])


def _top(values: np.ndarray, vectors: np.ndarray) -> TasteMetric:
    top = np.argsort(-values)[:MAX_METRIC_RANK]  # the rest count as directions no one had
    return TasteMetric(values[top], vectors[:, top])
