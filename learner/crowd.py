"""The crowd model: what everyone's votes say, as one linear taste over CLIP embeddings.

Interface (arrays in, arrays out; the caller owns IO and people's ids):

    model = train_crowd(embeddings, liked, weights, person_ids)   # (n, d), (n,), (n,)|None, (n,)
    model.predict(x) -> (m,) P(a newcomer likes x)
    model.logit(x)   -> (m,) the same on the logit scale (what a head uses as its prior)
    model.save(path); CrowdModel.load(path)      # self-describing .npz, no pickle
    model.info()     -> dict (what it was trained on, the chosen penalty, held-out AUC)
    model.advice     -> learner.advice.Advice | None: how heads with few votes are fitted
    evaluate_crowd(model, embeddings, liked, person_ids) -> mean per-person AUC | None
    promote_crowd(candidate_auc, active_auc) -> (promote?, reason)   # gating, as for heads

The model is ridge regression of +-1 votes on the embeddings *within each person*: every
person's embeddings and targets are centred on their own (weighted) means first, so the
direction learns what people prefer among the images they saw, not who votes on what or how
often anyone likes things. A Platt fit on scores the model did not train on (people held out
in folds) turns x . w into a probability for someone the model knows nothing else about.

The model also carries advice for heads (``learner.crowd_advice``): how to fit the linear part
(its penalty, and in which metric), the blend's default, how far a person's own blend moves
it and how much this model's logit adds to the score, as worked best on held-out votes of
sampled people at each of a few vote counts; and the crowd's taste metric, when the advice
uses it, and its image metric (where the voted images vary most), when the advice uses that.
A person's held-out votes score the advice in the taste metric of everyone else and with a
crowd model learnt from the other half of the people.

Privacy: the file holds the direction, two calibration numbers, the advice (a few settings per
vote count), the taste metric (the eigenvectors and eigenvalues of the mean outer product of
at least MIN_PEOPLE people's like-minus-dislike directions), the image metric (the top
eigenvectors and eigenvalues of the covariance of at least MIN_PEOPLE people's voted images)
and counts; no embedding, image or vote of anyone. A person's votes and images leave the crowd
model (its advice and metrics included) the next time it is trained without them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from learner.advice import Advice
from learner.crowd_advice import learn_advice
from learner.durable import save_npz_atomically
from learner.metrics import roc_auc
from learner.taste_metric import TasteMetric

# Older formats are read too, so that a bot keeps its crowd model across an upgrade: whatever
# advice a file lacks, a head chooses by its own votes' LOO instead (Advice.from_json).
FORMAT_VERSION = 5  # 5: the image metric beside the taste metric
READABLE_VERSIONS = (1, 2, 3, 4, 5)
KIND = "tastebot-crowd"
# Penalties tried, relative to the mean diagonal of the centred Gram matrix (the average
# per-dimension signal); chosen per training by grouped cross-validation, so none is fitted
# to a file. The range spans "barely regularised" to "almost only the mean direction".
RIDGE_RELATIVE = tuple(float(v) for v in np.logspace(-3, 1, 9))
GROUP_FOLDS = 5  # people are split into this many folds to choose the penalty and calibrate
WITHIN_PERSON_BLOCK = 2048  # rows per block when subtracting each person's mean
PLATT_PRIOR = 1e-2  # weak N(0, 10^2) prior on the Platt slope and intercept: finite when separable


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * z))
    return out


def fit_logistic_1d(
    s: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, iters: int = 50
) -> tuple[float, float]:
    """(a, c) maximising sum w log P(y | sigmoid(a s + c)) - PLATT_PRIOR (a^2 + c^2) / 2.

    Newton's method on a concave objective (the prior makes it strictly concave)."""
    w = np.ones(len(s)) if w is None else w
    a, c = 0.0, 0.0
    for _ in range(iters):
        p = _sigmoid(a * s + c)
        g = w * (y - p)
        r = w * p * (1 - p)
        grad = np.array([g @ s - PLATT_PRIOR * a, g.sum() - PLATT_PRIOR * c])
        hess = np.array([[r @ (s * s), r @ s], [r @ s, r.sum()]]) + PLATT_PRIOR * np.eye(2)
        step = np.linalg.solve(hess, grad)
        a, c = a + float(step[0]), c + float(step[1])
        if np.abs(step).max() < 1e-9:
            break
    return a, c


@dataclass(frozen=True)
class CrowdModel:
    """P(like x) = sigmoid(platt_a * (x . direction) + platt_c) for a person not yet known."""

    direction: np.ndarray  # (d,) float64
    platt_a: float
    platt_c: float
    meta: dict[str, Any] = field(default_factory=dict)
    advice: Advice | None = None

    def logit(self, embeddings: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(embeddings, dtype=np.float64))
        out: np.ndarray = self.platt_a * (x @ self.direction) + self.platt_c
        return out

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """(m, d) L2-normalised embeddings -> (m,) P(a newcomer likes each)."""
        return _sigmoid(self.logit(embeddings))

    def info(self) -> dict[str, Any]:
        return dict(self.meta)

    def save(self, path: Path) -> None:
        """Write atomically (temp file in the same directory, then os.replace)."""
        path = Path(path)
        meta = {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "platt_a": self.platt_a,
            "platt_c": self.platt_c,
            "info": self.meta,
            "advice": None if self.advice is None else self.advice.to_json(),
        }
        arrays: dict[str, Any] = {"direction": self.direction, "meta": np.array(json.dumps(meta))}
        for name in ("metric", "images"):
            metric = None if self.advice is None else getattr(self.advice, name)
            if metric is not None:
                arrays[f"{name}_values"] = metric.values
                arrays[f"{name}_vectors"] = metric.vectors
        save_npz_atomically(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> CrowdModel:
        """Raises ValueError (with the reason) for a file this code cannot read."""
        try:
            with np.load(Path(path), allow_pickle=False) as z:
                meta: dict[str, Any] = json.loads(str(z["meta"]))
                direction = np.array(z["direction"], dtype=np.float64)
                metric, images = (
                    TasteMetric(
                        np.array(z[f"{name}_values"], dtype=np.float64),
                        np.array(z[f"{name}_vectors"], dtype=np.float64),
                    )
                    if f"{name}_values" in z.files
                    else None
                    for name in ("metric", "images")
                )
        except (KeyError, OSError) as e:
            raise ValueError(f"{path}: not a crowd model file ({e})") from None
        if meta.get("kind") != KIND or meta.get("format_version") not in READABLE_VERSIONS:
            raise ValueError(
                f"{path}: crowd model format {meta.get('kind')!r} "
                f"{meta.get('format_version')!r}, this code reads {KIND!r} "
                f"{' and '.join(map(str, READABLE_VERSIONS))}"
            )
        advice = meta.get("advice")
        return cls(
            direction,
            float(meta["platt_a"]),
            float(meta["platt_c"]),
            dict(meta["info"]),
            None if advice is None else Advice.from_json(advice, metric, images),
        )


def _within_person(
    x: np.ndarray, t: np.ndarray, w: np.ndarray, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """x and t minus their person's weighted mean (a per-person intercept, profiled out)."""
    n_groups = int(groups.max()) + 1
    tot = np.bincount(groups, weights=w, minlength=n_groups)
    mx = np.zeros((n_groups, x.shape[1]))
    np.add.at(mx, groups, x * w[:, None])
    mx /= np.maximum(tot, 1e-12)[:, None]
    mt = np.bincount(groups, weights=w * t, minlength=n_groups) / np.maximum(tot, 1e-12)
    xc = np.empty(x.shape, dtype=np.float32)
    # Subtracted in float64 a block of rows at a time: one (n, d) float64 temporary of 100,000
    # votes took 1.4 s, ten times as long as the same arithmetic in blocks.
    for start in range(0, len(x), WITHIN_PERSON_BLOCK):
        rows = slice(start, start + WITHIN_PERSON_BLOCK)
        np.subtract(x[rows], mx[groups[rows]], out=xc[rows], casting="same_kind")
    tc: np.ndarray = t - mt[groups]
    return xc, tc


# One function: the folds, their Gram matrices and the held-out scores serve both the choice
# of penalty and the calibration.
def train_crowd(
    embeddings: np.ndarray,
    liked: np.ndarray,
    weights: np.ndarray | None,
    person_ids: np.ndarray,
    trained_on: dict[str, Any] | None = None,
    advise: bool = True,
) -> CrowdModel:
    """Fit the crowd direction on everyone's votes; ``trained_on`` is stored in the file's info
    (e.g. the encoder version and the date); ``advise``: also learn the advice for heads.
    Raises ValueError when no person has both a like and a dislike: there is then no
    preference to learn."""
    x = np.asarray(embeddings, dtype=np.float32)
    y = np.asarray(liked).astype(bool).ravel()
    n = len(y)
    if x.ndim != 2 or len(x) != n or len(np.asarray(person_ids)) != n:
        raise ValueError(f"need (n, d) embeddings, n votes and n person ids; got {x.shape}, {n}")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    _, groups = np.unique(np.asarray(person_ids), return_inverse=True)
    groups = groups.ravel()
    n_groups = int(groups.max()) + 1 if n else 0
    both = np.zeros(n_groups, dtype=bool)
    if n:
        pos = np.bincount(groups, weights=y.astype(float), minlength=n_groups)
        cnt = np.bincount(groups, minlength=n_groups)
        both = (pos > 0) & (pos < cnt)
    if not both.any():
        raise ValueError("the crowd model needs at least one person with a like and a dislike")
    keep = both[groups]  # a one-sided person says nothing about preferences among images
    x, y, w, groups = x[keep], y[keep], w[keep], np.unique(groups[keep], return_inverse=True)[1]
    n_groups = int(groups.max()) + 1
    advice = (
        learn_advice(x, y, w, groups, held_logit=_held_logit(x, y, w, groups)) if advise else None
    )
    # Each person's likes and dislikes weigh the same in total (as a head balances them).
    t = np.where(y, 1.0, -1.0)
    side = groups * 2 + y
    side_tot = np.bincount(side, weights=w, minlength=2 * n_groups)
    person_tot = side_tot.reshape(-1, 2).sum(axis=1)
    w = w * person_tot[groups] / (2.0 * side_tot[side])
    xc, tc = _within_person(x, t, w, groups)
    d = x.shape[1]

    def gram(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xr = xc[rows] * np.sqrt(w[rows]).astype(np.float32)[:, None]
        g = (xr.T @ xr).astype(np.float64)
        r = xc[rows].T.astype(np.float64) @ (w[rows] * tc[rows])
        return g, r

    fold_of_group = np.random.default_rng(0).permutation(n_groups) % min(GROUP_FOLDS, n_groups)
    fold = fold_of_group[groups]
    n_folds = int(fold.max()) + 1
    parts = [gram(np.flatnonzero(fold == f)) for f in range(n_folds)]
    g_all = sum((p[0] for p in parts), np.zeros((d, d)))
    r_all = sum((p[1] for p in parts), np.zeros(d))
    scale = float(np.trace(g_all)) / d
    lams = [scale * r for r in RIDGE_RELATIVE]
    oof = np.zeros((len(lams), len(y)))  # held-out x . w for every penalty (all folds)
    if n_folds > 1:
        for f in range(n_folds):
            rows = fold == f
            s2, v = np.linalg.eigh(g_all - parts[f][0])
            vr = v.T @ (r_all - parts[f][1])
            proj = x[rows].astype(np.float64) @ v
            for i, lam in enumerate(lams):
                oof[i, rows] = proj @ (vr / (np.maximum(s2, 0.0) + lam))
        # Penalty: the held-out squared error of within-person targets (scale fitted per
        # penalty, as the calibration will refit it).
        errs = []
        for i in range(len(lams)):
            sc, _ = _within_person(oof[i][:, None], tc, w, groups)
            s = sc[:, 0].astype(np.float64)
            k = float((w * s) @ tc) / max(float((w * s) @ s), 1e-12)
            errs.append(float(w @ (tc - k * s) ** 2))
        best = int(np.argmin(errs))
    else:
        best = len(lams) // 2
    s2, v = np.linalg.eigh(g_all)
    direction = v @ ((v.T @ r_all) / (np.maximum(s2, 0.0) + lams[best]))
    held = oof[best] if n_folds > 1 else x.astype(np.float64) @ direction
    a, c = fit_logistic_1d(held, y.astype(np.float64), w / w.mean())
    aucs = _person_aucs(held, y, groups)
    info: dict[str, Any] = {
        "n_votes": len(y),
        "n_people": int(n_groups),
        "dim": int(d),
        "lambda_relative": RIDGE_RELATIVE[best],
        "heldout_auc": float(np.mean(aucs)) if aucs else None,
        "advice_budgets": [] if advice is None else list(advice.budgets),
        **(trained_on or {}),
    }
    return CrowdModel(direction, a, c, info, advice)


def _held_logit(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, groups: np.ndarray
) -> np.ndarray | None:
    """Each vote's logit by a crowd model (without advice) trained on the other half of the
    people (a fixed random split); None when a half has no one with both likes and dislikes."""
    half = (np.random.default_rng([0, 1]).permutation(int(groups.max()) + 1) % 2)[groups]
    out = np.zeros(len(y))
    for k in (0, 1):
        other = half != k
        try:
            model = train_crowd(x[other], y[other], w[other], groups[other], advise=False)
        except ValueError:
            return None
        out[~other] = model.logit(x[~other])
    return out


def _person_aucs(scores: np.ndarray, y: np.ndarray, groups: np.ndarray) -> list[float]:
    out = []
    for g in np.unique(groups):
        rows = groups == g
        auc = roc_auc(y[rows], scores[rows])
        if auc is not None:
            out.append(auc)
    return out


def evaluate_crowd(
    model: CrowdModel, embeddings: np.ndarray, liked: np.ndarray, person_ids: np.ndarray
) -> float | None:
    """Mean AUC over the people whose votes here have both a like and a dislike (None if none).

    For gating: score a candidate and the active crowd model on the same held-out votes and
    promote the candidate only if its figure is not lower."""
    y = np.asarray(liked).astype(bool).ravel()
    if len(y) == 0:
        return None
    _, groups = np.unique(np.asarray(person_ids), return_inverse=True)
    aucs = _person_aucs(model.logit(embeddings), y, groups.ravel())
    return float(np.mean(aucs)) if aucs else None


def promote_crowd(candidate_auc: float | None, active_auc: float | None) -> tuple[bool, str]:
    """Promote a candidate crowd model unless held-out votes show it ranks worse than the
    active one (both figures from ``evaluate_crowd`` on the same held-out votes)."""
    if active_auc is None:
        if candidate_auc is None:
            return True, "first crowd model (held-out votes cannot rank it)"
        return True, f"first crowd model, held-out AUC {candidate_auc:.3f}"
    if candidate_auc is None:
        return False, "held-out votes cannot rank the new crowd model"
    if candidate_auc >= active_auc:
        return True, f"held-out AUC {candidate_auc:.3f} ≥ active {active_auc:.3f}"
    return False, f"held-out AUC {candidate_auc:.3f} < active {active_auc:.3f}"
