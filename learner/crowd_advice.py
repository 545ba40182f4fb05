"""What other people's votes say about fitting a head from few votes ("advice").

A person with 20 votes cannot choose their own ridge penalty or blend weights reliably: their
leave-one-out estimates are too noisy (bench/results/learning.md). Other people's votes can:
for a few vote budgets, each sampled crowd person is split into ``budget`` training votes and
the rest held out, the head's parts are fitted on the training votes, and the settings whose
held-out AUC, averaged over the splits, is highest become the advice for that budget:

- the linear part: plain x, the salient stretch, the crowd's taste metric (``taste_metric``:
  the directions people's tastes lie along) or its image metric (``image_metric``: the
  directions the voted images vary along) at a strength from METRIC_STRENGTHS,
  its penalty (from RIDGE_LAMBDAS), and whether the crowd model's logit may be its prior (the
  person's LOO then chooses how much) or not;
- the blend: its default (a point of the simplex, grid 1/BLEND_GRID) and how far a person's
  own LOO blend moves it (the trust r in pi = (1 - r) default + r pi_hat, from TRUSTS): with
  few votes the own blend is mostly noise, with many it knows the person better than anyone;
- the crowd offset: how much the crowd model's logit adds to the calibrated score (from
  CROWD_OFFSETS, or "the person's own LOO choice").

The advice adapts to whatever the bot's people are like: where tastes are directions, the
default leans on the linear part; where they are clusters of subjects, on the centroid and the
nearest votes. A person's held-out votes are scored with the metric of everyone else's taste
directions (``metric_without``) and a crowd model learnt from the other half of the people
(cross-fitting): a metric or crowd direction that contains the person's own taste would
flatter itself. Leaving out one person rather than half keeps the metric measured as near as
can be to the one a head gets, learnt from everyone (bench/results/learning.md). The advice
holds these aggregate settings and the metrics (an average over at least MIN_PEOPLE people's
taste directions; the top principal directions of all their voted images), no one's votes or
embeddings.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from learner.advice import Advice
from learner.head_fit import RIDGE_LAMBDAS, _blend_grid, _platt_fits, _salient_axes
from learner.head_parts import (
    CROWD_OFFSETS,
    PARTS,
    LinearChoice,
    Parts,
    balanced_weights,
    crowd_offset_for,
    fit_parts,
    own_blend,
    without_crowd_prior,
)
from learner.metrics import column_aucs
from learner.taste_metric import (
    TasteMetric,
    image_metric,
    metric_of,
    metric_without,
    taste_directions,
)

BUDGETS = (10, 20, 50, 100, 200, 500)  # vote counts advised on (where the crowd has enough)
MIN_HELD_OUT = 20  # a person advises on a budget only with this many more votes to test on
# Fewer people with enough votes than this: no advice for that budget (a priori: a handful of
# people's tastes should not decide how everyone's head is fitted).
MIN_PEOPLE = 5
# Train / held-out splits per budget, spread over as many people as there are (several random
# splits of each when there are fewer): bounds the crowd model's training time, and averages
# enough held-out AUCs that the argmax over settings is not one person's noise.
SPLITS = 200
# The crowd logit is the linear part's prior (the person's LOO choosing its strength) only
# where that beat gamma 0 by this many standard errors of the mean gain over people (a priori:
# with few votes a person's LOO takes chance agreement with an unrelated crowd for evidence,
# and the person pays for it).
CROWD_EVIDENCE_SE = 2.0
TRUSTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # weights of a person's own LOO blend tried (see above)
METRIC_STRENGTHS = (0.25, 0.5, 0.75)  # alpha of the taste metric tried (0, none, is plain x)


def _ridge_test_scores(
    gram: np.ndarray, cross: np.ndarray, t: np.ndarray, sw: np.ndarray
) -> np.ndarray:
    """(k, L) scores of held-out images by the weighted ridge (bias a penalised ones column,
    as the head's) at every penalty of RIDGE_LAMBDAS, from the features' inner products alone:
    ``gram`` (n, n) among the training votes, ``cross`` (k, n) of the held-out images with
    them; one n x n eigendecomposition serves every penalty."""
    root = np.sqrt(sw)
    s2, u = np.linalg.eigh((gram + 1.0) * np.outer(root, root))
    s2 = np.maximum(s2, 0.0)
    coef = (u.T @ (t * root))[:, None] / (s2[:, None] + np.array(RIDGE_LAMBDAS)[None, :])
    out: np.ndarray = (((cross + 1.0) * root) @ u) @ coef
    return out


def _splits(
    eligible: list[np.ndarray], y: np.ndarray, budget: int, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """About SPLITS train/held-out splits of ``budget`` training votes, spread over the eligible
    people; only splits with two votes on each side to train on and both sides held out."""
    picked = rng.permutation(len(eligible))[:SPLITS]
    splits = []
    for i in picked:
        for _ in range(max(1, SPLITS // len(picked))):
            perm = rng.permutation(eligible[i])
            train, test = perm[:budget], perm[budget:]
            n_pos, held_pos = int(y[train].sum()), int(y[test].sum())
            if min(n_pos, budget - n_pos) >= 2 and 0 < held_pos < len(test):
                splits.append((train, test))
    return splits


Split = tuple[np.ndarray, np.ndarray, TasteMetric | None]  # train, held out, the other half's


def _option_products(
    xt: np.ndarray, xs: np.ndarray, metrics: list[TasteMetric | None]
) -> list[np.ndarray]:
    """For each way the linear part may read x (plain, salient, then each of ``metrics`` at
    each of METRIC_STRENGTHS, where there is one): the (n + k, n) inner products of the mapped
    training votes ``xt`` and held-out images ``xs`` with the mapped training votes.

    Ridge on x mapped by a symmetric M needs only inner products through P = M^2: for the
    salient stretch base^2 I + V diag(factors^2 - base^2) V^T, for the metric (1 - alpha) I +
    alpha C. So no image is mapped, and the plain products serve every option."""
    xt, xs = xt.astype(np.float64), xs.astype(np.float64)
    plain = np.vstack([xt, xs]) @ xt.T
    base, vec, factors = _salient_axes(xt, None)
    vt, vs = xt @ vec, xs @ vec
    out = [plain, base * base * plain + np.vstack([vt, vs]) @ (vt * (factors**2 - base**2)).T]
    for metric in metrics:
        if metric is not None:
            mt, ms = xt @ metric.vectors, xs @ metric.vectors
            stretched = np.vstack([mt, ms]) @ (mt * metric.values).T
            out += [(1.0 - a) * plain + a * stretched for a in METRIC_STRENGTHS]
    return out


def _linear_choice(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, splits: list[Split], images: TasteMetric | None
) -> LinearChoice:
    """Plain, salient, in the taste metric or in the image metric ``images`` (each strength),
    and the penalty: the best mean held-out AUC of the linear part alone."""
    # Without a metric its rows stay at 0 AUC: never chosen.
    rows_tried = [(False, 0.0, False), (True, 0.0, False)]
    rows_tried += [(False, a, on_images) for on_images in (False, True) for a in METRIC_STRENGTHS]
    aucs = np.zeros((len(rows_tried), len(RIDGE_LAMBDAS)))
    for train, test, other_half in splits:
        yt = y[train].astype(np.int64)
        sw = balanced_weights(yt, w[train])
        n = len(train)
        products = _option_products(x[train], x[test], [other_half, images])
        rows = [0, 1]
        if other_half is not None:
            rows += list(range(2, 2 + len(METRIC_STRENGTHS)))
        if images is not None:
            rows += list(range(2 + len(METRIC_STRENGTHS), len(rows_tried)))
        for row, p in zip(rows, products, strict=True):
            scores = _ridge_test_scores(p[:n], p[n:], 2.0 * yt - 1.0, sw)
            aucs[row] += column_aucs(y[test], scores)
    best_row, best_col = np.unravel_index(int(np.argmax(aucs)), aucs.shape)
    salient, alpha, on_images = rows_tried[best_row]
    return LinearChoice(salient, float(RIDGE_LAMBDAS[best_col]), alpha, images=on_images)


def _split_metric(
    choice: LinearChoice, other_half: TasteMetric | None, images: TasteMetric | None
) -> TasteMetric | None:
    """The metric a split's parts are fitted in under ``choice``."""
    return images if choice.images else other_half


def _fit_splits(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    splits: list[Split],
    choice: LinearChoice,
    held_logit: np.ndarray | None,
    images: TasteMetric | None,
) -> list[Parts]:
    """The head's parts fitted on each split's training votes, the linear part as ``choice``."""
    out = []
    for train, _, other_half in splits:
        yt = y[train].astype(np.int64)
        offset = None if held_logit is None else held_logit[train]
        sw = balanced_weights(yt, w[train])
        metric = _split_metric(choice, other_half, images)
        out.append(fit_parts(x[train], yt, sw, None, offset, choice, metric))
    return out


def _best_beyond_noise(aucs: np.ndarray, owners: np.ndarray, safe: int) -> int:
    """The column of ``aucs`` (splits x options) with the best mean, among the ``safe`` column
    and those whose gain over it, averaged per person (``owners``: each split's person),
    exceeds CROWD_EVIDENCE_SE standard errors of its mean over people."""
    people, index = np.unique(owners, return_inverse=True)
    per_person = np.zeros((len(people), aucs.shape[1]))
    np.add.at(per_person, index, aucs)
    per_person /= np.bincount(index)[:, None]
    gains = per_person - per_person[:, safe : safe + 1]
    se = gains.std(axis=0, ddof=1) / np.sqrt(len(people)) if len(people) > 1 else np.inf
    passing = gains.mean(axis=0) > CROWD_EVIDENCE_SE * se
    passing[safe] = True
    return int(np.argmax(np.where(passing, aucs.mean(axis=0), -np.inf)))


def _prior_choice(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    splits: list[Split],
    owners: np.ndarray,
    choice: LinearChoice,
    held_logit: np.ndarray,
    images: TasteMetric | None,
) -> tuple[LinearChoice, list[Parts]]:
    """Whether the crowd logit may be the linear part's prior (gamma by the person's own LOO)
    or not (gamma 0), by the held-out AUC of the linear part (``_best_beyond_noise``): with
    few votes the LOO takes chance agreement with an unrelated crowd for evidence often enough
    to cost more than a crowd that shares the taste gains. Returns the choice and each split's
    parts fitted that way."""
    options = [replace(choice, crowd_prior=prior) for prior in (False, True)]
    fits: list[list[Parts]] = [[], _fit_splits(x, y, w, splits, options[1], held_logit, images)]
    aucs = np.zeros((len(splits), 2))
    for i, ((train, test, other_half), parts) in enumerate(zip(splits, fits[1], strict=True)):
        # Without the prior only the linear part can differ, and only where gamma > 0.
        yt = y[train].astype(np.int64)
        sw = balanced_weights(yt, w[train])
        metric = _split_metric(choice, other_half, images)
        fits[0].append(without_crowd_prior(parts, x[train], yt, sw, options[1], metric))
        linear = np.stack([f[i].scores(x[test], held_logit[test])[:, 0] for f in fits], axis=1)
        aucs[i] = column_aucs(y[test], linear)
    best = _best_beyond_noise(aucs, owners, safe=0)
    return options[best], fits[best]


def _blend_choice(
    x: np.ndarray,
    y: np.ndarray,
    splits: list[Split],
    fits: list[Parts],
    held_logit: np.ndarray | None,
) -> tuple[tuple[float, ...], float, float | None]:
    """The blend's default, the trust in a person's own blend and the crowd offset delta (None:
    the person's own choice), from each split's fitted parts ``fits``: the best mean held-out
    AUC of the blended parts, then of the calibrated score with each delta as a person applies
    it (``crowd_offset_for``: their votes may veto it). delta takes the plain argmax: with the
    crowd prior's test (``_best_beyond_noise``) the crowd kind lost most of its gain at 20
    votes, as the held-out logit comes from a crowd model of half the people,
    weaker than a head's (bench/results/learning.md)."""
    grid = _blend_grid(len(PARTS))
    aucs = np.zeros((len(TRUSTS), len(grid)))
    fitted = []
    for (train, test, _), parts in zip(splits, fits, strict=True):
        yt = y[train].astype(np.int64)
        spread, pi_hat = own_blend(parts.loo, yt[parts.kept])
        held_out = parts.scores(x[test], None if held_logit is None else held_logit[test])
        held_out /= spread
        fitted.append((parts, spread, pi_hat, held_out))
        for row, r in enumerate(TRUSTS):
            aucs[row] += column_aucs(y[test], held_out @ ((1.0 - r) * grid + r * pi_hat).T)
    best_trust, best_blend = np.unravel_index(int(np.argmax(aucs)), aucs.shape)
    default, trust = grid[best_blend], float(TRUSTS[best_trust])
    if held_logit is None:
        return tuple(float(v) for v in default), trust, None
    # The crowd offset: each delta of CROWD_OFFSETS, or the person's own LOO choice (None).
    offsets: list[float | None] = [None, *CROWD_OFFSETS]
    offset_aucs = np.zeros(len(offsets))
    for (train, test, _), (parts, spread, pi_hat, held_out) in zip(splits, fitted, strict=True):
        pi = (1.0 - trust) * default + trust * pi_hat
        z, z_test = (parts.loo / spread) @ pi, held_out @ pi
        yk = y[train][parts.kept].astype(np.float64)
        crowd_kept, crowd_test = held_logit[train][parts.kept], held_logit[test]
        deltas = np.array([crowd_offset_for(delta, z, yk, crowd_kept) for delta in offsets])
        a, c, _ = _platt_fits(z[:, None], yk, 0.0, np.outer(crowd_kept, deltas))
        scores = np.outer(z_test, a) + c + np.outer(crowd_test, deltas)
        offset_aucs += column_aucs(y[test], scores)
    return tuple(float(v) for v in default), trust, offsets[int(np.argmax(offset_aucs))]


def learn_advice(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    groups: np.ndarray,
    seed: int = 0,
    held_logit: np.ndarray | None = None,
) -> Advice | None:
    """Advice from votes ``x`` (n, d), ``y`` (n,) bool, weights ``w`` and ``groups`` (n,) person
    indices 0..P-1; None when no budget has a person with enough votes. ``held_logit``: each
    vote's logit by a crowd model trained on the other half of the people (cross-fitted by the
    caller), so that the advice also covers how much the crowd model counts."""
    rng = np.random.default_rng(seed)
    by_person = [np.flatnonzero(groups == g) for g in range(int(groups.max()) + 1)]
    # A person's held-out votes are scored with the metric of everyone else's directions.
    directions = taste_directions(x, y, w, by_person)
    counted = [v for v in directions if v is not None]
    metric = metric_of(counted, MIN_PEOPLE)
    others: list[TasteMetric | None] = [None] * len(by_person)
    if metric is not None and len(counted) > MIN_PEOPLE:
        others = [
            metric if v is None else metric_without(metric, v, len(counted)) for v in directions
        ]
    images = image_metric(x) if len(by_person) >= MIN_PEOPLE else None
    budgets, linear, blends, people, trusts = [], [], [], [], []
    offsets: list[float | None] = []
    for budget in BUDGETS:
        eligible = [rows for rows in by_person if len(rows) >= budget + MIN_HELD_OUT]
        if len(eligible) < MIN_PEOPLE:
            continue
        splits = [(tr, te, others[groups[tr[0]]]) for tr, te in _splits(eligible, y, budget, rng)]
        if not splits:
            continue
        owners = groups[[train[0] for train, _, _ in splits]]
        choice = _linear_choice(x, y, w, splits, images)
        if held_logit is None:
            fits = _fit_splits(x, y, w, splits, choice, None, images)
        else:
            choice, fits = _prior_choice(x, y, w, splits, owners, choice, held_logit, images)
        blend, trust, delta = _blend_choice(x, y, splits, fits, held_logit)
        budgets.append(budget)
        linear.append(choice)
        blends.append(blend)
        trusts.append(trust)
        offsets.append(delta)
        people.append(len(np.unique(owners)))
    if not budgets:
        return None
    return Advice(
        tuple(budgets),
        tuple(linear),
        tuple(blends),
        tuple(people),
        tuple(trusts),
        metric if any(c.metric and not c.images for c in linear) else None,
        None if held_logit is None else tuple(offsets),
        images if any(c.metric and c.images for c in linear) else None,
    )
