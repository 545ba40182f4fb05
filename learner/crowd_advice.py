"""What other people's votes say about fitting a head from few votes ("advice").

A person with 20 votes cannot choose their own ridge penalty or blend weights reliably: their
leave-one-out estimates are too noisy (bench/results/learning.md). Other people's votes can:
for a few vote budgets, each sampled crowd person is split into ``budget`` training votes and
the rest held out, the head's parts are fitted on the training votes, and the settings whose
held-out AUC, averaged over the splits, is highest become the advice for that budget:

- the linear part: plain x or the salient stretch, and its penalty (from RIDGE_LAMBDAS);
- the blend's default: the point of the simplex (grid 1/BLEND_GRID) a person's own LOO blend
  is shrunk towards.

The advice adapts to whatever the bot's people are like: where tastes are directions, the
default leans on the linear part; where they are clusters of subjects, on the centroid and the
nearest votes. It holds only these aggregate settings, no one's votes or embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from learner.head_fit import RIDGE_LAMBDAS, _blend_grid, _salient_stretch
from learner.head_parts import PARTS, LinearChoice, balanced_weights, fit_parts

BUDGETS = (10, 20, 50, 100, 200, 500)  # vote counts advised on (where the crowd has enough)
MIN_HELD_OUT = 20  # a person advises on a budget only with this many more votes to test on
# Fewer people with enough votes than this: no advice for that budget (a priori: a handful of
# people's tastes should not decide how everyone's head is fitted).
MIN_PEOPLE = 5
# Train / held-out splits per budget, spread over as many people as there are (several random
# splits of each when there are fewer): bounds the crowd model's training time, and averages
# enough held-out AUCs that the argmax over settings is not one person's noise.
SPLITS = 200
# The advice at the largest budget measured also serves people with up to this many times as
# many votes; beyond, the person's own LOO chooses the linear part (reliable with many votes).
REACH = 1.5


@dataclass(frozen=True)
class Advice:
    """Per budget: the linear part's fit and the blend's default (PARTS order)."""

    budgets: tuple[int, ...]
    linear: tuple[LinearChoice, ...]
    blends: tuple[tuple[float, ...], ...]
    people: tuple[int, ...]  # how many people each budget was measured on

    def at(self, n: int) -> tuple[LinearChoice | None, np.ndarray]:
        """The advice for a person with n votes: the nearest budget's (log scale); no linear
        choice beyond REACH times the largest budget."""
        i = int(np.argmin(np.abs(np.log(self.budgets) - np.log(max(n, 1)))))
        linear = self.linear[i] if n <= REACH * self.budgets[-1] else None
        return linear, np.array(self.blends[i])

    def to_json(self) -> dict[str, Any]:
        return {
            "budgets": list(self.budgets),
            "salient": [c.salient for c in self.linear],
            "penalties": [c.penalty for c in self.linear],
            "blends": [list(b) for b in self.blends],
            "people": list(self.people),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Advice:
        return cls(
            tuple(int(b) for b in d["budgets"]),
            tuple(
                LinearChoice(bool(s), float(p))
                for s, p in zip(d["salient"], d["penalties"], strict=True)
            ),
            tuple(tuple(float(v) for v in b) for b in d["blends"]),
            tuple(int(p) for p in d["people"]),
        )


def _column_aucs(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC of each column of ``scores`` (k, c) against 0/1 labels y (ties count half)."""
    order = np.argsort(scores, axis=0, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=0)
    ranks = np.empty_like(scores)
    k = len(y)
    for col in range(scores.shape[1]):
        # average ranks over ties, via the first and last position of each distinct value
        s = sorted_scores[:, col]
        first = np.searchsorted(s, s, side="left")
        last = np.searchsorted(s, s, side="right")
        ranks[order[:, col], col] = (first + last + 1) / 2.0
    pos = y.astype(bool)
    n_pos = int(pos.sum())
    out: np.ndarray = (ranks[pos].sum(axis=0) - n_pos * (n_pos + 1) / 2.0) / (n_pos * (k - n_pos))
    return out


def _ridge_test_scores(
    x: np.ndarray, t: np.ndarray, sw: np.ndarray, x_test: np.ndarray
) -> np.ndarray:
    """(k, L) scores of held-out images by the weighted ridge (bias a penalised ones column,
    as the head's) at every penalty of RIDGE_LAMBDAS, from one n x n eigendecomposition."""
    root = np.sqrt(sw)
    z = np.hstack([x, np.ones((len(x), 1))]).astype(np.float64) * root[:, None]
    s2, u = np.linalg.eigh(z @ z.T)
    s2 = np.maximum(s2, 0.0)
    zt = np.hstack([x_test, np.ones((len(x_test), 1))]).astype(np.float64)
    coef = (u.T @ (t * root))[:, None] / (s2[:, None] + np.array(RIDGE_LAMBDAS)[None, :])
    out: np.ndarray = ((zt @ z.T) @ u) @ coef
    return out


def learn_advice(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, groups: np.ndarray, seed: int = 0
) -> Advice | None:
    """Advice from votes ``x`` (n, d), ``y`` (n,) bool, weights ``w`` and ``groups`` (n,) person
    indices 0..P-1; None when no budget has a person with enough votes."""
    rng = np.random.default_rng(seed)
    grid = _blend_grid(len(PARTS))
    by_person = [np.flatnonzero(groups == g) for g in range(int(groups.max()) + 1)]
    budgets, linear, blends, people = [], [], [], []
    for budget in BUDGETS:
        eligible = [rows for rows in by_person if len(rows) >= budget + MIN_HELD_OUT]
        if len(eligible) < MIN_PEOPLE:
            continue
        picked = rng.permutation(len(eligible))[:SPLITS]
        splits = []
        for i in picked:
            for _ in range(max(1, SPLITS // len(picked))):
                perm = rng.permutation(eligible[i])
                train, test = perm[:budget], perm[budget:]
                n_pos, held_pos = int(y[train].sum()), int(y[test].sum())
                if min(n_pos, budget - n_pos) >= 2 and 0 < held_pos < len(test):
                    splits.append((train, test))
        if not splits:
            continue
        # The linear part: plain or stretched, each penalty, by mean held-out AUC.
        aucs = np.zeros((2, len(RIDGE_LAMBDAS)))
        for train, test in splits:
            xt, yt = x[train], y[train].astype(np.int64)
            sw = balanced_weights(yt, w[train])
            stretch = _salient_stretch(xt, None)
            for row, m in enumerate((None, stretch)):
                a = xt if m is None else xt @ m
                b = x[test] if m is None else x[test] @ m
                aucs[row] += _column_aucs(y[test], _ridge_test_scores(a, 2.0 * yt - 1.0, sw, b))
        best_row, best_col = np.unravel_index(int(np.argmax(aucs)), aucs.shape)
        choice = LinearChoice(bool(best_row == 1), float(RIDGE_LAMBDAS[best_col]))
        # The blend's default, with the linear part fitted that way.
        blend_aucs = np.zeros(len(grid))
        for train, test in splits:
            yt = y[train].astype(np.int64)
            parts = fit_parts(x[train], yt, balanced_weights(yt, w[train]), linear=choice)
            spread = np.maximum(parts.loo.std(axis=0), 1e-12)
            blend_aucs += _column_aucs(y[test], (parts.scores(x[test]) / spread) @ grid.T)
        budgets.append(budget)
        linear.append(choice)
        blends.append(tuple(float(v) for v in grid[int(np.argmax(blend_aucs))]))
        people.append(len({int(groups[s[0][0]]) for s in splits}))
    if not budgets:
        return None
    return Advice(tuple(budgets), tuple(linear), tuple(blends), tuple(people))
