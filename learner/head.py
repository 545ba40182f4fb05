"""Per-person taste heads over CLIP image embeddings.

A head turns an L2-normalised embedding into a calibrated probability that one
person likes the image. It is trained on that person's votes only:

    raw(x) = x . w + b                    linear part (ridge classifier)
    p(x)   = sigmoid(a * raw(x) + c)      Platt scaling

The ridge penalty is chosen by exact leave-one-out on the person's own votes, and
the Platt parameters are fitted on those leave-one-out scores, so the score shown
to the person is calibrated on votes the model did not see.

With one-sided votes (all likes or all dislikes) there is nothing to separate;
the head falls back to the cold-start prior (see ``cold_start_scores``).

Pure numpy; a head file is an ``np.savez`` archive with JSON metadata (no pickle).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DISLIKE, LIKE, SUPER_LIKE = 0, 1, 2

FORMAT_VERSION = 1
SUPER_LIKE_WEIGHT = 2.0  # a super like is stronger evidence than a like
PRIOR_STRENGTH = 10.0  # logit per unit of (cos to liked centroid - cos to disliked centroid)
RIDGE_LAMBDAS = tuple(float(v) for v in np.logspace(-3, 2, 11))  # LOO picks one per person
MIN_PER_CLASS = 2
MIN_PLATT_SLOPE = 1e-3  # keep the ranking even when held-out scores are uninformative  # fewer votes on either side: use the centroid prior


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic
    return out


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def _centroid(rows: np.ndarray) -> np.ndarray:
    return _unit(rows.astype(np.float64).mean(axis=0)) if len(rows) else np.zeros(rows.shape[1])


def cold_start_scores(embeddings: np.ndarray, liked: np.ndarray, disliked: np.ndarray) -> np.ndarray:
    """The prior score used before a person has a trained head.

    With c_L and c_D the normalised means of the liked and disliked embeddings and
    s_L = cos(x, c_L), s_D = cos(x, c_D):

    - no votes at all:     p = 0.5
    - likes and dislikes:  p = sigmoid(10 * (s_L - s_D))
    - only likes:          p = sigmoid((1 + s_L) / 2)   in [0.5, 0.73]
    - only dislikes:       p = sigmoid(-(1 + s_D) / 2)  in [0.27, 0.5]

    One-sided votes say what the person resembles, not where the boundary is, so
    the prior only leans gently towards (or away from) them.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    w, b, a = _prior_linear(np.asarray(liked), np.asarray(disliked), x.shape[1])
    return _sigmoid(a * (x @ w + b))


def _prior_linear(liked: np.ndarray, disliked: np.ndarray, d: int) -> tuple[np.ndarray, float, float]:
    """(w, b, a) with cold_start_scores(x) = sigmoid(a * (x . w + b))."""
    liked = liked.reshape(-1, d)
    disliked = disliked.reshape(-1, d)
    if len(liked) and len(disliked):
        return _centroid(liked) - _centroid(disliked), 0.0, PRIOR_STRENGTH
    if len(liked):
        return 0.5 * _centroid(liked), 0.5, 1.0
    if len(disliked):
        return -0.5 * _centroid(disliked), -0.5, 1.0
    return np.zeros(d), 0.0, 0.0


@dataclass(frozen=True)
class TasteHead:
    """A trained per-person model; immutable after training."""

    weights: np.ndarray  # (d,) float64
    bias: float
    platt_a: float
    platt_c: float
    meta: dict[str, float | int | str] = field(default_factory=dict)

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, d) L2-normalised embeddings -> (n,) calibrated P(person likes it)."""
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim == 1:
            x = x[None, :]
        raw = x @ self.weights + self.bias
        return _sigmoid(self.platt_a * raw + self.platt_c)

    @property
    def info(self) -> dict[str, float | int | str]:
        """What training chose (JSON-serialisable)."""
        return dict(self.meta)

    def save(self, path: Path) -> None:
        """Write atomically: temp file in the same directory, then os.replace."""
        path = Path(path)
        meta = {
            "format_version": FORMAT_VERSION,
            "bias": self.bias,
            "platt_a": self.platt_a,
            "platt_c": self.platt_c,
            "info": self.meta,
        }
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, weights=self.weights, meta=np.array(json.dumps(meta)))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> "TasteHead":
        with np.load(Path(path), allow_pickle=False) as z:
            meta: dict[str, Any] = json.loads(str(z["meta"]))
            weights = np.array(z["weights"], dtype=np.float64)
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported head format {meta.get('format_version')!r}")
        return cls(
            weights=weights,
            bias=float(meta["bias"]),
            platt_a=float(meta["platt_a"]),
            platt_c=float(meta["platt_c"]),
            meta=dict(meta["info"]),
        )


def _ridge_loo(
    x: np.ndarray, t: np.ndarray, sw: np.ndarray, lambdas: tuple[float, ...]
) -> tuple[float, np.ndarray, np.ndarray, float]:
    """Weighted ridge regression of targets t on [x, 1], lambda chosen by exact LOO.

    Returns (lambda, w, loo_predictions, b).
    """
    n, d = x.shape
    z = np.hstack([x, np.ones((n, 1))]) * np.sqrt(sw)[:, None]
    tw = t * np.sqrt(sw)
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    ut_t = u.T @ tw
    s2 = s * s
    best: tuple[float, float, np.ndarray] | None = None
    for lam in lambdas:
        shrink = s2 / (s2 + lam)
        fitted = (u * shrink) @ ut_t / np.sqrt(sw)
        h = np.einsum("ij,j,ij->i", u, shrink, u)
        loo = t - (t - fitted) / np.maximum(1.0 - h, 1e-9)
        err = float(np.sum(sw * (t - loo) ** 2))
        if best is None or err < best[1]:
            best = (lam, err, loo)
    assert best is not None
    lam, _, loo = best
    beta = vt.T @ ((s / (s2 + lam)) * ut_t)
    return lam, beta[:d], loo, float(beta[d])


def _fit_platt(scores: np.ndarray, y: np.ndarray, iters: int = 50) -> tuple[float, float]:
    """Logistic fit p = sigmoid(a*s + c) by Newton, with Platt's smoothed targets."""
    n_pos = float(y.sum())
    n_neg = float(len(y) - n_pos)
    target = np.where(y > 0, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    a, c = 1.0, 0.0
    for _ in range(iters):
        p = _sigmoid(a * scores + c)
        g = p - target
        r = p * (1 - p) + 1e-12
        grad = np.array([g @ scores, g.sum()])
        hess = np.array([[r @ (scores * scores), r @ scores], [r @ scores, r.sum()]])
        hess += 1e-6 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        a, c = max(a - step[0], MIN_PLATT_SLOPE), c - step[1]
        if np.abs(step).max() < 1e-8:
            break
    return float(a), float(c)


def train_head(
    embeddings: np.ndarray,
    votes: np.ndarray,
    unlabeled: np.ndarray | None = None,
    seed: int = 0,
) -> TasteHead:
    """Train one person's head on their votes (codes DISLIKE, LIKE, SUPER_LIKE).

    Works for any number of votes >= 1; with too few votes on one side it returns
    the cold-start prior as a head. ``unlabeled`` (images the person sent but did
    not vote on) and ``seed`` are accepted for API stability.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    v = np.asarray(votes).astype(np.int64).ravel()
    if x.ndim != 2 or len(x) != len(v) or len(v) == 0:
        raise ValueError(f"need (n, d) embeddings and n >= 1 votes, got {x.shape} and {v.shape}")
    y = (v >= LIKE).astype(np.float64)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if min(n_pos, n_neg) < MIN_PER_CLASS:
        w, b, a = _prior_linear(x[y == 1], x[y == 0], x.shape[1])
        return TasteHead(w, b, a, 0.0, {"kind": "prior", "n_train": len(y), "n_liked": n_pos})

    sw = np.where(v == SUPER_LIKE, SUPER_LIKE_WEIGHT, 1.0)
    # Balance the classes so the boundary does not drift towards the majority.
    sw = sw * np.where(y == 1, len(y) / (2 * sw[y == 1].sum()), len(y) / (2 * sw[y == 0].sum()))
    t = 2 * y - 1
    lam, w, loo, b = _ridge_loo(x, t, sw, RIDGE_LAMBDAS)
    a, c = _fit_platt(loo, y)
    info: dict[str, float | int | str] = {
        "kind": "ridge",
        "n_train": len(y),
        "n_liked": n_pos,
        "lambda": lam,
        "platt_a": a,
        "platt_c": c,
    }
    return TasteHead(w, b, a, c, info)
