"""The three parts a taste head blends, fitted on one person's votes with their leave-one-out
(LOO) scores: the linear part (ridge on x, or on x stretched along the person's salient
directions), the centroid direction and the nearest votes, both in f-space. learner.head
blends and calibrates them; learner.crowd_advice fits them on other people's votes to learn
what a blend should start from."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from learner.head_fit import (
    CROWD_EVIDENCE_NATS,
    MAX_NEAREST,
    _blend_grid,
    _centring_shift,
    _centroid_loo,
    _dimension_scale,
    _f_space,
    _fit_platt,
    _nearest,
    _platt_fits,
    _ridge_loo,
    _salient_axes,
    _salient_stretch,
)
from learner.metrics import roc_auc
from learner.taste_metric import TasteMetric

PARTS = ("linear", "centroid", "nearest")
# The crowd's logit may also be added to the final score at these strengths (1: as calibrated):
# inside the blend the crowd is diluted by parts learnt from few votes.
CROWD_OFFSETS = (0.0, 0.5, 1.0)
# A person's votes veto the crowd's advised offset where its logit ranks them this many chance
# standard errors below 0.5 (a priori, as the crowd advice's CROWD_EVIDENCE_SE).
VETO_SE = 2.0


@dataclass(frozen=True)
class LinearChoice:
    """How the linear part is fitted when the person's own LOO is not trusted to choose: on
    plain x, on the salient stretch, or on one of the crowd's metrics at strength ``metric`` >
    0 (the taste metric, or where the crowd's images vary when ``images``), one penalty, and
    whether the crowd logit may be its prior (``crowd_prior``: the person's LOO then chooses
    its strength gamma; otherwise gamma is 0). All learnt from other people by crowd_advice."""

    salient: bool
    penalty: float
    metric: float = 0.0
    crowd_prior: bool = True
    images: bool = False


@dataclass(frozen=True)
class Parts:
    """The fitted parts and their LOO scores on the kept votes (``loo``, one column a part)."""

    weights: np.ndarray  # (d,) linear part on x (the crowd's offset not folded in)
    bias: float
    penalty: float
    crowd_weight: float  # gamma: the crowd logit's strength inside the linear part
    salient: bool
    shift: np.ndarray
    scale: np.ndarray
    centroid: np.ndarray  # (d,) in f-space
    kept: np.ndarray  # indices of the votes the nearest-vote part keeps
    vote_feats: np.ndarray  # (m, d) f(x) of the kept votes, float16-exact
    vote_values: np.ndarray  # (m,) +-1
    loo: np.ndarray  # (m, 3) LOO scores of the kept votes, in PARTS order

    def scores(self, x: np.ndarray, crowd_logit: np.ndarray | None = None) -> np.ndarray:
        """(k, 3) each part's score of new images (the linear part plus gamma * crowd logit)."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float32))
        lin = x.astype(np.float64) @ self.weights + self.bias
        if crowd_logit is not None:
            lin = lin + self.crowd_weight * crowd_logit
        f = _f_space(x, self.shift, self.scale)
        near = _nearest(f @ self.vote_feats.T, self.vote_values)
        return np.stack([lin, f.astype(np.float64) @ self.centroid, near], axis=1)


def own_blend(loo: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(spread, pi_hat): each part's LOO spread, and the blend of the spread-normalised LOO
    scores that the person's own votes y (0/1) like best (LOO likelihood, simplex grid)."""
    spread = np.maximum(loo.std(axis=0), 1e-12)
    s = loo / spread
    yf = y.astype(np.float64)
    grid = _blend_grid(loo.shape[1])
    lls = _platt_fits(s @ grid.T, yf)[2]
    return spread, grid[int(np.argmax(lls))]


def own_crowd_offset(z: np.ndarray, y: np.ndarray, crowd_logit: np.ndarray) -> float:
    """delta in CROWD_OFFSETS: the crowd logit's strength in the final score that the blended
    LOO scores z of the person's votes y (0/1) support by likelihood (a delta > 0 must gain
    CROWD_EVIDENCE_NATS)."""
    deltas = np.array(CROWD_OFFSETS)
    column = np.asarray(z, dtype=np.float64)[:, None]  # one score column, an offset per delta
    _, _, lls = _platt_fits(column, np.asarray(y, np.float64), 0.0, np.outer(crowd_logit, deltas))
    lls -= CROWD_EVIDENCE_NATS * (deltas > 0)
    return float(deltas[int(np.argmax(lls))])  # the first of equal likelihoods: the weakest


def crowd_offset_for(
    advised: float | None, z: np.ndarray, y: np.ndarray, crowd_logit: np.ndarray
) -> float:
    """delta for a person with blended LOO scores z of their votes y (0/1): the crowd's
    ``advised`` delta, or their own choice (``own_crowd_offset``) where it advises none. Their
    votes veto advice (delta 0) where the crowd's logit ranks them below chance by more than
    VETO_SE standard errors of a chance AUC: advice fits the people of a vote count on
    average, and would pull a person unlike them towards the crowd. Merely no better than
    chance is not enough: with few votes people who share the crowd's taste show that often
    (a veto at AUC <= 0.5 cost the crowd kind 0.034 of AUC at 20 votes on flowers;
    bench/results/learning.md)."""
    if advised is None:
        return own_crowd_offset(z, y, crowd_logit)
    if advised == 0.0:
        return 0.0
    auc = roc_auc(y, crowd_logit)
    if auc is None:
        return 0.0
    n_pos = int(np.sum(y > 0))
    n_neg = len(y) - n_pos
    # Hanley and McNeil's standard error of the AUC of a score unrelated to the votes
    chance_se = np.sqrt((n_pos + n_neg + 1) / (12.0 * n_pos * n_neg))
    return 0.0 if auc < 0.5 - VETO_SE * chance_se else advised


def balanced_weights(y: np.ndarray, sw0: np.ndarray) -> np.ndarray:
    """Vote weights scaled so that likes and dislikes weigh the same in total (mean 1)."""
    n = len(y)
    out: np.ndarray = sw0 * np.where(
        y == 1, n / (2 * sw0[y == 1].sum()), n / (2 * sw0[y == 0].sum())
    )
    return out


def _fit_linear(
    x: np.ndarray,
    t: np.ndarray,
    sw: np.ndarray,
    unlabeled: np.ndarray | None,
    offset: np.ndarray | None,
    linear: LinearChoice | None,
    metric: TasteMetric | None,
) -> tuple[float, float, np.ndarray, float, np.ndarray, bool]:
    """The linear part on targets t (+-1), as fit_parts says: (penalty, gamma, weights on x,
    bias, LOO scores of every vote, salient)."""
    n = len(x)
    # The stretch costs an eigendecomposition: only when the linear part may read it.
    salient_possible = linear is None or linear.salient
    axes = _salient_axes(x, unlabeled) if salient_possible else None
    stretched = x if axes is None else _salient_stretch(x, axes).astype(np.float32)
    if linear is not None and linear.metric > 0.0 and metric is not None:
        salient = False
        lam, gamma, w, b, loo_lin = _ridge_loo(
            metric.stretch(x, linear.metric).astype(np.float32), t, sw, offset, (linear.penalty,)
        )
        w = metric.stretch(w[None, :], linear.metric)[0]
    elif linear is not None:
        salient = linear.salient
        lam, gamma, w, b, loo_lin = _ridge_loo(
            stretched if salient else x, t, sw, offset, (linear.penalty,)
        )
    else:
        lam, gamma, w, b, loo_lin = _ridge_loo(x, t, sw, offset)
        # ... and the same on x stretched along the directions in which the person's images
        # vary most (a prior that a taste follows the salient visual axes more than the faint
        # ones); the person's votes choose between the two by LOO likelihood.
        lam2, gamma2, w2, b2, loo2 = _ridge_loo(stretched, t, sw, offset)
        rows = np.arange(0, n, max(1, n // MAX_NEAREST))
        y_rows = (t[rows] > 0).astype(np.float64)
        salient = _fit_platt(loo2[rows], y_rows)[2] > _fit_platt(loo_lin[rows], y_rows)[2]
        if salient:
            lam, gamma, w, b, loo_lin = lam2, gamma2, w2, b2, loo2
    if salient and axes is not None:
        w = _salient_stretch(w[None, :], axes)[0]  # the map is symmetric
    return lam, gamma, w, b, loo_lin, bool(salient)


def without_crowd_prior(
    parts: Parts,
    x: np.ndarray,
    y: np.ndarray,
    sw: np.ndarray,
    linear: LinearChoice,
    metric: TasteMetric | None = None,
) -> Parts:
    """``parts`` that ``fit_parts(x, y, sw, None, offset, linear, metric)`` fitted, as it fits
    them when ``linear.crowd_prior`` is False: the same parts where the person's LOO gave the
    prior no weight (gamma 0), else with the linear part refitted (the others do not read the
    crowd)."""
    if parts.crowd_weight == 0.0:
        return parts
    lam, gamma, w, b, loo_lin, salient = _fit_linear(
        x, 2.0 * y - 1.0, sw, None, None, linear, metric
    )
    loo = parts.loo.copy()
    loo[:, 0] = loo_lin[parts.kept]
    return replace(
        parts, weights=w, bias=b, penalty=lam, crowd_weight=gamma, salient=salient, loo=loo
    )


# One function: the parts share f-space, the kept votes and the vote weights.
def fit_parts(
    x: np.ndarray,
    y: np.ndarray,
    sw: np.ndarray,
    unlabeled: np.ndarray | None = None,
    offset: np.ndarray | None = None,
    linear: LinearChoice | None = None,
    metric: TasteMetric | None = None,
    seed: int = 0,
) -> Parts:
    """Fit the three parts on votes y (0/1, both sides present) with balanced weights sw.

    ``offset``: the crowd model's logit of each vote (the linear part's prior, unless
    ``linear`` says otherwise). ``linear``:
    fit the linear part this way (``metric`` is the crowd's metric it names); None
    lets the person's LOO choose the penalty and, by LOO likelihood, plain x or the salient
    stretch. ``seed`` fixes which votes the nearest-vote part keeps when there are more than
    MAX_NEAREST."""
    n, d = x.shape
    if linear is not None and not linear.crowd_prior:
        offset = None
    lam, gamma, w, b, loo_lin, salient = _fit_linear(
        x, 2.0 * y - 1.0, sw, unlabeled, offset, linear, metric
    )

    # f-space from all the person's images; the nearest-vote part keeps at most MAX_NEAREST
    # votes, rounded to float16 now so the saved file scores exactly as the trained head.
    u = np.zeros((0, d), np.float32) if unlabeled is None else np.asarray(unlabeled, np.float32)
    images = np.vstack([x, u.reshape(-1, d)])
    shift = _centring_shift(images)
    scale = _dimension_scale(_f_space(images, shift, np.ones(d)))
    f = _f_space(x, shift, scale)
    kept = np.arange(n)
    if n > MAX_NEAREST:
        kept = np.sort(np.random.default_rng(seed).permutation(n)[:MAX_NEAREST])
    vote_feats = f[kept].astype(np.float16).astype(np.float32)
    vote_values = np.where(y[kept] == 1, 1.0, -1.0)
    centroid, loo_cen = _centroid_loo(f, y)
    sims = vote_feats @ vote_feats.T
    np.fill_diagonal(sims, -np.inf)
    loo = np.stack([loo_lin[kept], loo_cen[kept], _nearest(sims, vote_values)], axis=1)
    return Parts(
        weights=w,
        bias=b,
        penalty=lam,
        crowd_weight=gamma,
        salient=salient,
        shift=shift,
        scale=scale,
        centroid=centroid,
        kept=kept,
        vote_feats=vote_feats,
        vote_values=vote_values,
        loo=loo,
    )
