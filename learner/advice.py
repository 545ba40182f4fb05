"""The advice a crowd model carries for heads (``learner.crowd_advice`` learns it): per vote
budget, how the linear part is fitted, the blend's default, the trust in a person's own blend
and the crowd offset; the metrics its choices name; and its JSON form in the crowd file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from learner.head_parts import LinearChoice
from learner.taste_metric import TasteMetric

# The advice at the largest budget measured also serves people with up to this many times as
# many votes; beyond, the person's own LOO chooses the linear part (reliable with many votes).
# A crowd's people have a few hundred votes, so advice ends at budgets where a person's own LOO
# still chooses worse than it (bench/results/learning.md: at 200 votes, the advice for 100 beat
# the person's own choices in 8 of 10 kind-file pairs); an end keeps a person unlike the crowd
# from being held to its blend for ever. 5 is the largest multiple measured (500 votes).
REACH = 5.0


@dataclass(frozen=True)
class Advice:
    """Per budget: the linear part's fit, the blend's default (PARTS order) and the trust in
    the person's own blend (None: advice from before the trust was learnt)."""

    budgets: tuple[int, ...]
    linear: tuple[LinearChoice, ...]
    blends: tuple[tuple[float, ...], ...]
    people: tuple[int, ...]  # how many people each budget was measured on
    trusts: tuple[float, ...] | None = None
    metric: TasteMetric | None = None  # what a LinearChoice with metric > 0 stretches by
    # delta, the crowd logit's strength in the final score (None: the person's LOO chooses)
    offsets: tuple[float | None, ...] | None = None
    images: TasteMetric | None = None  # ... and one with ``images`` set

    def metric_for(self, choice: LinearChoice | None) -> TasteMetric | None:
        """The metric that ``choice`` stretches x by (None: it names none)."""
        if choice is None or choice.metric == 0.0:
            return None
        return self.images if choice.images else self.metric

    def at(self, n: int) -> tuple[LinearChoice | None, np.ndarray, float | None, float | None]:
        """(linear part, blend default, trust, crowd offset) for a person with n votes: the
        nearest budget's (log scale); beyond REACH times the largest budget, the person's own
        LOO chooses the linear part, how much their own blend counts and the offset."""
        i = int(np.argmin(np.abs(np.log(self.budgets) - np.log(max(n, 1)))))
        if n > REACH * self.budgets[-1]:
            return None, np.array(self.blends[i]), None, None
        trust = None if self.trusts is None else self.trusts[i]
        offset = None if self.offsets is None else self.offsets[i]
        return self.linear[i], np.array(self.blends[i]), trust, offset

    def to_json(self) -> dict[str, Any]:
        return {
            "budgets": list(self.budgets),
            "salient": [c.salient for c in self.linear],
            "penalties": [c.penalty for c in self.linear],
            "metric_strengths": [c.metric for c in self.linear],
            "crowd_priors": [c.crowd_prior for c in self.linear],
            "image_metric": [c.images for c in self.linear],
            "blends": [list(b) for b in self.blends],
            "people": list(self.people),
            "trusts": None if self.trusts is None else list(self.trusts),
            "offsets": None if self.offsets is None else list(self.offsets),
        }

    @classmethod
    def from_json(
        cls,
        d: dict[str, Any],
        metric: TasteMetric | None = None,
        images: TasteMetric | None = None,
    ) -> Advice:
        """The inverse of to_json; ``metric`` and ``images``: the metrics' arrays (stored
        beside)."""
        n = len(d["budgets"])
        strengths = d.get("metric_strengths") or [0.0] * n
        priors = d.get("crowd_priors") or [True] * n
        on_images = d.get("image_metric") or [False] * n
        linear = tuple(
            LinearChoice(bool(s), float(p), float(m), bool(c), bool(i))
            for s, p, m, c, i in zip(
                d["salient"], d["penalties"], strengths, priors, on_images, strict=True
            )
        )
        if any(c.metric and (images if c.images else metric) is None for c in linear):
            raise ValueError("the advice names a metric that is not there")
        return cls(
            tuple(int(b) for b in d["budgets"]),
            linear,
            tuple(tuple(float(v) for v in b) for b in d["blends"]),
            tuple(int(p) for p in d["people"]),
            None if d.get("trusts") is None else tuple(float(t) for t in d["trusts"]),
            metric,
            None
            if d.get("offsets") is None
            else tuple(None if o is None else float(o) for o in d["offsets"]),
            images,
        )
