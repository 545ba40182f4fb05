"""Per-person taste heads over CLIP image embeddings.

Interface (arrays in, arrays out):

    head = train_head(embeddings, liked, weights=None, unlabeled=None, crowd=None, seed=0)
        embeddings (n, d) float32 L2-normalised, liked (n,) bool or 0/1, weights (n,) float or
        None (a super like is a like of weight SUPER_LIKE_WEIGHT), unlabeled (m, d) images the
        person sent without voting, crowd a learner.crowd.CrowdModel or None
    head.predict(x) -> (k,) calibrated P(the person likes each image)
    head.save(path); TasteHead.load(path)   # np.savez + JSON, no pickle; an older format is a
                                            # ValueError saying so (retrain the person)
    head.info() -> dict: what training chose, "crowd_weight" included

A head is a blend of three learners (``learner.head_parts``), each scored on the person's own
votes by leave-one-out (LOO), and the person's votes decide the blend:

    lin(x) = gamma * crowd(x) + x . w + b   ridge regression of the +-1 votes on x, offset by
             the crowd model's logit; gamma >= 0 from CROWD_STRENGTHS by LOO likelihood (a
             gamma > 0 must gain CROWD_EVIDENCE_NATS), so a person unlike the crowd gets
             gamma = 0 and is not pulled towards it; gamma is 0 where the crowd's advice says
             that the LOO's choice cost other people more than it gained them (with few votes
             it takes chance agreement for evidence). The penalty, and whether the ridge reads x,
             x stretched along the principal directions of the person's images
             (``_salient_stretch``), x in the crowd's taste metric (``TasteMetric``: the
             directions people's tastes lie along) or x in its image metric (the directions
             in which everyone's voted images vary most), come from the crowd model's
             advice for this many votes (``learner.crowd_advice``: what worked best on other
             people's held-out votes); without advice, the penalty by exact LOO squared error
             and plain or salient by LOO likelihood.
    cen(x) = f(x) . (c_L - c_D)             liked minus disliked centroid direction
    nn(x)  = softmax-weighted mean of the +-1 votes nearest f(x) (k-NN)
    z(x)   = sum_j pi_j part_j(x) / spread_j,   pi on the simplex
    p(x)   = eps + (1 - 2 eps) * sigmoid(a z(x) + c + delta * crowd(x))

f(x) is x centred on the person's images and with its dimensions' variances evened out
(``_centring_shift``, ``_dimension_scale``): the space where "more like these images" is
measured. The ridge reads x itself: a taste along a direction of CLIP space (a style) lies in
its loud dimensions, which f damps.

delta in CROWD_OFFSETS is the crowd's advice for this many votes where it has one (what ranked
other people's held-out votes best), vetoed (0) where the crowd's logit ranks the person's own
votes clearly below chance (``crowd_offset_for``), else chosen by the likelihood of the blended
LOO scores (a delta > 0 must gain CROWD_EVIDENCE_NATS too): inside the blend the crowd is
diluted by parts learnt from few votes. info()["crowd_weight"] is gamma, info()["crowd_offset"]
delta.

The blend: pi_hat maximises the LOO likelihood over a grid of the simplex, then is shrunk
towards a default as pi = (1 - r) default + r pi_hat: picking one learner outright on 20-100
votes is too noisy (DESIGN.md), so few votes lean on the default. The default and the trust r
are the crowd's advice for this many votes (what ranked other people's held-out votes best:
linear where tastes are directions, centroid and nearest votes where they are subjects; r as
far as people's own blends helped them), or equal weights and r = n / (n + BLEND_PRIOR_VOTES)
without advice. (a, c, eps) are fitted on the blended LOO scores, so the score shown is
calibrated.

With fewer than MIN_PER_CLASS votes on either side there is no boundary to learn: the head's
logit is the cold-start prior's (``cold_start_scores``; 0 with no votes) plus the crowd
model's when there is one. A newcomer (0 votes) is scored by the crowd model alone, or 0.5.

The crowd model is folded into the head's linear part (its direction times gamma), so a head
does not need the crowd model to score, and a new crowd model reaches a person at their next
retrain. The head file holds no one else's embeddings or votes: the person's voted images (in
f-space, float16, at most MAX_NEAREST of them) and a few direction vectors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from learner.durable import save_npz_atomically
from learner.head_fit import (
    _f_space,
    _nearest,
    _platt_fits,
    _sigmoid,
)
from learner.head_parts import PARTS, balanced_weights, crowd_offset_for, fit_parts, own_blend
from learner.prior import prior_linear

if TYPE_CHECKING:
    from learner.crowd import CrowdModel

FORMAT_VERSION = 8  # 8: the blended ridge / centroid / nearest-vote head with a crowd prior
SUPER_LIKE_WEIGHT = 2.0  # a super like is stronger evidence than a like (the bot's vote weight)
MIN_PER_CLASS = 2  # fewer votes on either side: no boundary, use the crowd model or the prior
# Votes at which the person's own LOO blend and the equal blend weigh the same. Chosen a
# priori as the budget where the DESIGN.md measurement found per-person choice still too noisy
# (20-100 votes); see bench/results/learning.md for what other values measured.
BLEND_PRIOR_VOTES = 50.0
VOTE_NOISE_CHOICES = (0.0, 0.025, 0.05, 0.075, 0.1)  # eps: the person's inconsistency rate


@dataclass(frozen=True)
class TasteHead:
    """A trained per-person model; immutable after training.

    z(x) = mix[0] * (x . weights + bias) + mix[1] * f(x) . centroid + mix[2] * nn(f(x)),
    p(x) = vote_noise + (1 - 2 vote_noise) * sigmoid(platt_a * z(x) + platt_c),
    with f(x) = unit(unit(x - shift) * scale) and nn(.) the softmax-weighted (NEAREST_K,
    NEAREST_TEMPERATURE) mean of ``vote_values`` over the nearest rows of ``vote_feats``. Each
    part's blend weight divided by its LOO spread is folded into ``weights``/``bias``,
    ``f_weights`` and ``mix[2]`` (mix[0] and mix[1] are 1), and so are the crowd model's
    direction times gamma and its offset delta."""

    weights: np.ndarray  # (d,) float64 linear part, crowd included
    bias: float
    f_weights: np.ndarray  # (d,) float64 in f-space: the centroid and f-space ridge parts
    f_bias: float
    vote_feats: np.ndarray  # (m, d) float32 f(x) of voted images, float16-exact
    vote_values: np.ndarray  # (m,) float64 +-1
    shift: np.ndarray  # (d,) float64
    scale: np.ndarray  # (d,) float64
    mix: np.ndarray  # (3,) float64
    platt_a: float
    platt_c: float
    vote_noise: float
    meta: dict[str, Any] = field(default_factory=dict)

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, d) L2-normalised embeddings -> (n,) calibrated P(person likes it)."""
        x = np.atleast_2d(np.asarray(embeddings, dtype=np.float32))
        z = self.mix[0] * (x.astype(np.float64) @ self.weights + self.bias)
        if self.mix[1] != 0.0 or self.mix[2] != 0.0:
            f = _f_space(x, self.shift, self.scale)
            z += self.mix[1] * (f.astype(np.float64) @ self.f_weights + self.f_bias)
            if self.mix[2] != 0.0 and len(self.vote_values):
                z += self.mix[2] * _nearest(f @ self.vote_feats.T, self.vote_values)
        out: np.ndarray = self.vote_noise + (1.0 - 2.0 * self.vote_noise) * _sigmoid(
            self.platt_a * z + self.platt_c
        )
        return out

    def info(self) -> dict[str, Any]:
        """What training chose (JSON-serialisable)."""
        return dict(self.meta)

    def nbytes(self) -> int:
        """About the size of the head's file."""
        return int(
            self.vote_feats.size * 2 + 8 * (self.vote_values.size + 4 * len(self.weights)) + 4096
        )

    def save(self, path: Path) -> None:
        """Write atomically: temp file in the same directory, then os.replace."""
        path = Path(path)
        meta = {
            "format_version": FORMAT_VERSION,
            "bias": self.bias,
            "f_bias": self.f_bias,
            "platt_a": self.platt_a,
            "platt_c": self.platt_c,
            "vote_noise": self.vote_noise,
            "info": self.meta,
        }
        arrays: dict[str, Any] = {  # Any: savez types its keywords as allow_pickle too
            "weights": self.weights,
            "f_weights": self.f_weights,
            "vote_feats": self.vote_feats.astype(np.float16),  # exact: rounded before training
            "vote_values": self.vote_values.astype(np.int8),
            "shift": self.shift,
            "scale": self.scale,
            "mix": self.mix,
            "meta": np.array(json.dumps(meta)),
        }
        save_npz_atomically(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> TasteHead:
        """Raises ValueError for a file of another format (retrain the person)."""
        with np.load(Path(path), allow_pickle=False) as z:
            try:
                meta: dict[str, Any] = json.loads(str(z["meta"]))
            except KeyError:
                raise ValueError(f"{path}: not a head file (no metadata)") from None
            version = meta.get("format_version")
            if version != FORMAT_VERSION:
                raise ValueError(
                    f"{path}: head format {version!r}, this code reads format {FORMAT_VERSION} "
                    "only (heads before 8 had no crowd prior); retrain the person"
                )
            return cls(
                weights=np.array(z["weights"], dtype=np.float64),
                bias=float(meta["bias"]),
                f_weights=np.array(z["f_weights"], dtype=np.float64),
                f_bias=float(meta["f_bias"]),
                vote_feats=np.array(z["vote_feats"], dtype=np.float32),
                vote_values=np.array(z["vote_values"], dtype=np.float64),
                shift=np.array(z["shift"], dtype=np.float64),
                scale=np.array(z["scale"], dtype=np.float64),
                mix=np.array(z["mix"], dtype=np.float64),
                platt_a=float(meta["platt_a"]),
                platt_c=float(meta["platt_c"]),
                vote_noise=float(meta["vote_noise"]),
                meta=dict(meta["info"]),
            )


def _linear_head(w: np.ndarray, b: float, a: float, meta: dict[str, Any], d: int) -> TasteHead:
    """A head that is sigmoid(a (x . w + b)): the crowd model and/or the cold-start prior."""
    return TasteHead(
        weights=w,
        bias=b,
        f_weights=np.zeros(d),
        f_bias=0.0,
        vote_feats=np.zeros((0, d), dtype=np.float32),
        vote_values=np.zeros(0),
        shift=np.zeros(d),
        scale=np.ones(d),
        mix=np.array([1.0, 0.0, 0.0]),
        platt_a=a,
        platt_c=0.0,
        vote_noise=0.0,
        meta=meta,
    )


# One function: the blend, the crowd offset and the calibration are fitted on the same LOO
# scores and kept votes; apart, each step would take most of the others' values.
def train_head(
    embeddings: np.ndarray,
    liked: np.ndarray,
    weights: np.ndarray | None = None,
    unlabeled: np.ndarray | None = None,
    crowd: CrowdModel | None = None,
    seed: int = 0,
) -> TasteHead:
    """Train one person's head on their votes (see the module docstring).

    ``weights``: each vote's weight (SUPER_LIKE_WEIGHT for a super like, 1 otherwise; None:
    all 1). ``unlabeled``: images the person sent without voting; they shape f-space (centring
    and scaling). ``crowd``: the crowd model, used as a prior as far as the person's votes say
    it fits them, and alone while there is no boundary to learn. ``seed`` fixes which votes the
    nearest-vote part keeps when there are more than MAX_NEAREST."""
    x = np.asarray(embeddings, dtype=np.float32)
    y = np.asarray(liked).astype(bool).ravel().astype(np.int64)
    if x.ndim == 1 and len(y) == 0:
        x = x.reshape(0, -1)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"need (n, d) embeddings and n votes, got {x.shape} and {y.shape}")
    n, d = x.shape
    sw0 = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if sw0.shape != (n,) or not np.all(np.isfinite(sw0)) or np.any(sw0 <= 0):
        raise ValueError(f"need n positive finite weights, got shape {sw0.shape}")
    n_pos = int(y.sum())
    if min(n_pos, n - n_pos) < MIN_PER_CLASS:
        # No boundary to learn: the cold-start prior's logit from the votes there are (0 with
        # none), plus the crowd model's when there is one. The prior's few votes outweigh a
        # crowd that knows little (its logit is flat), and a newcomer gets the crowd alone.
        w, b, a = prior_linear(x[y == 1], x[y == 0], d)
        counts = {"n_train": n, "n_liked": n_pos}
        if crowd is None:
            return _linear_head(w, b, a, {"kind": "cold start", **counts, "crowd_weight": 0.0}, d)
        w = a * w + crowd.platt_a * crowd.direction
        b = a * b + crowd.platt_c
        kind = "crowd model" if n == 0 else "crowd model + cold start"
        return _linear_head(w, b, 1.0, {"kind": kind, **counts, "crowd_weight": 1.0}, d)

    # Votes: super likes weigh more, then the two sides weigh the same in total.
    sw = balanced_weights(y, sw0)
    # Where the crowd has advice for this many votes, it says how to fit the linear part, the
    # blend's default, how far the person's own blend moves it and the crowd offset; otherwise
    # the person's own LOO chooses and the default is equal weights.
    advice = None if crowd is None or crowd.advice is None else crowd.advice.at(n)
    linear, default, trust, advised_delta = (None, None, None, None) if advice is None else advice
    if default is None:
        default = np.full(len(PARTS), 1.0 / len(PARTS))
    offset = None if crowd is None else crowd.logit(x)
    metric = None if crowd is None or crowd.advice is None else crowd.advice.metric_for(linear)
    parts = fit_parts(x, y, sw, unlabeled, offset, linear, metric, seed)
    w, b, gamma = parts.weights, parts.bias, parts.crowd_weight
    if crowd is not None and gamma > 0:
        w = w + gamma * crowd.platt_a * crowd.direction
        b += gamma * crowd.platt_c
    kept, vote_feats, vote_values = parts.kept, parts.vote_feats, parts.vote_values
    u_count = 0 if unlabeled is None else len(np.asarray(unlabeled).reshape(-1, d))

    # The blend, from the parts' LOO scores on the kept votes.
    yk = y[kept].astype(np.float64)
    spread, pi_hat = own_blend(parts.loo, yk)
    if trust is None:
        trust = n / (n + BLEND_PRIOR_VOTES)
    pi = (1.0 - trust) * default + trust * pi_hat
    z = (parts.loo / spread) @ pi
    crowd_kept = np.zeros(len(kept)) if crowd is None else crowd.logit(x[kept])
    best_delta = 0.0 if crowd is None else crowd_offset_for(advised_delta, z, yk, crowd_kept)
    noise = np.array(VOTE_NOISE_CHOICES)
    slopes, intercepts, lls = _platt_fits(z[:, None], yk, noise, (best_delta * crowd_kept)[:, None])
    best = int(np.argmax(lls))  # the first of equal likelihoods: the least noise
    a, c, eps = float(slopes[best]), float(intercepts[best]), float(noise[best])
    m = dict(zip(PARTS, pi / spread, strict=True))
    f_weights, f_bias = m["centroid"] * parts.centroid, 0.0
    # The linear part's blend weight is folded into its weights (it may be 0), and so is
    # delta * crowd(x) / a, so that p = sigmoid(a z + c) with z as in TasteHead.
    w, b = m["linear"] * w, m["linear"] * b
    if crowd is not None and best_delta > 0:
        w = w + best_delta / a * crowd.platt_a * crowd.direction
        b += best_delta / a * crowd.platt_c
    mix = np.array([1.0, 1.0, m["nearest"]])
    meta: dict[str, Any] = {
        "kind": "blend",
        "n_train": n,
        "n_liked": n_pos,
        "lambda": parts.penalty,
        "salient_prior": parts.salient,
        "crowd_advice": linear is not None,
        "taste_metric": 0.0 if linear is None or linear.images else linear.metric,
        "image_metric": 0.0 if linear is None or not linear.images else linear.metric,
        "crowd_weight": gamma,
        "crowd_offset": best_delta,
        **{f"blend_{p}": float(v) for p, v in zip(PARTS, pi, strict=True)},
        "platt_a": a,
        "platt_c": c,
        "vote_noise": eps,
        "n_nearest": len(kept),
        "n_unlabeled": u_count,  # the unvoted images that shaped f-space
    }
    return TasteHead(
        weights=w,
        bias=b,
        f_weights=f_weights,
        f_bias=f_bias,
        vote_feats=vote_feats,
        vote_values=vote_values,
        shift=parts.shift,
        scale=parts.scale,
        mix=mix,
        platt_a=a,
        platt_c=c,
        vote_noise=eps,
        meta=meta,
    )
