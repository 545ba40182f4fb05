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

A head is a blend of three learners, each scored on the person's own votes by leave-one-out
(LOO), and the person's votes decide the blend:

    lin(x) = gamma * crowd(x) + x . w + b   ridge regression of the +-1 votes on x, offset by
             the crowd model's logit; the penalty by exact LOO squared error, gamma >= 0 from
             CROWD_STRENGTHS by LOO likelihood (a gamma > 0 must gain CROWD_EVIDENCE_NATS), so
             a person unlike the crowd gets gamma = 0 and is not pulled towards it. The same
             ridge on x stretched along the principal directions of the person's images
             (``_salient_stretch``) is fitted too, and the LOO likelihood keeps one of the two.
    cen(x) = f(x) . (c_L - c_D)             liked minus disliked centroid direction
    nn(x)  = softmax-weighted mean of the +-1 votes nearest f(x) (k-NN)
    z(x)   = sum_j pi_j part_j(x) / spread_j,   pi on the simplex
    p(x)   = eps + (1 - 2 eps) * sigmoid(a z(x) + c + delta * crowd(x))

f(x) is x centred on the person's images and with its dimensions' variances evened out
(``_centring_shift``, ``_dimension_scale``): the space where "more like these images" is
measured. The ridge reads x itself: a taste along a direction of CLIP space (a style) lies in
its loud dimensions, which f damps.

delta in CROWD_OFFSETS is chosen with (a, c) by the likelihood of the blended LOO scores (a
delta > 0 must gain CROWD_EVIDENCE_NATS too): inside the blend the crowd is diluted by parts
learnt from few votes. info()["crowd_weight"] is gamma, info()["crowd_offset"] delta.

The blend: pi_hat maximises the LOO likelihood over a grid of the simplex, then is shrunk
towards equal weights as pi = (1 - r) equal + r pi_hat with r = n / (n + BLEND_PRIOR_VOTES):
picking one learner outright on 20-100 votes is too noisy (DESIGN.md), so few votes lean on
the default. (a, c, eps) are fitted on the blended LOO scores, so the score shown is calibrated.

With fewer than MIN_PER_CLASS votes on either side there is no boundary to learn: the head's
logit is the cold-start prior's (``cold_start_scores``; 0 with no votes) plus the crowd
model's when there is one. A newcomer (0 votes) is scored by the crowd model alone, or 0.5.

The crowd model is folded into the head's linear part (its direction times gamma), so a head
does not need the crowd model to score, and a new crowd model reaches a person at their next
retrain. The head file holds no one else's embeddings or votes: the person's voted images (in
f-space, float16, at most MAX_NEAREST of them) and a few direction vectors.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from learner.durable import fsync_directory

if TYPE_CHECKING:
    from learner.crowd import CrowdModel

FORMAT_VERSION = 8  # 8: the blended ridge / centroid / nearest-vote head with a crowd prior
SUPER_LIKE_WEIGHT = 2.0  # a super like is stronger evidence than a like (the bot's vote weight)
MIN_PER_CLASS = 2  # fewer votes on either side: no boundary, use the crowd model or the prior
PRIOR_STRENGTH = 10.0  # cold-start prior: logit per unit of (cos to liked - cos to disliked)
# Ridge penalties: LOO picks one per person. The range is the previous head's (format 1-7),
# from "interpolates the votes" to "little more than their mean".
RIDGE_LAMBDAS = tuple(float(v) for v in np.logspace(-3, 2, 11))
# Strengths of the crowd prior tried, in +-1 target units per unit of the crowd's (calibrated)
# logit. A calibrated logit o means E[target] = tanh(o / 2) ~ o / 2, so 0.5 is "as the crowd
# says"; a crowd that knows little has a flat logit and adds little at any strength.
CROWD_STRENGTHS = (0.0, 0.125, 0.25, 0.5, 1.0)
CROWD_EVIDENCE_NATS = 1.0  # the crowd prior is one more parameter: it must buy 1 nat (AIC)
NEAREST_K = 7  # votes read by the nearest-vote part (the k-NN reference's k)
NEAREST_TEMPERATURE = 0.05  # softmax temperature over their cosines in f-space (format 5-7's)
MAX_NEAREST = 2000  # votes kept for the nearest-vote part: bounds file size and scoring time
BLEND_GRID = 8  # the simplex of blend weights is searched in steps of 1/8
# Votes at which the person's own LOO blend and the equal blend weigh the same. Chosen a
# priori as the budget where the DESIGN.md measurement found per-person choice still too noisy
# (20-100 votes); see bench/results/learning.md for what other values measured.
BLEND_PRIOR_VOTES = 50.0
MIN_PLATT_SLOPE = 1e-3  # logit per LOO standard deviation: the ranking is kept (see _fit_platt)
MAX_PLATT_SLOPE = 4.0  # steeper saturates scores into ties (format 1-7's bound)
PLATT_PRIOR = 0.01  # precision of the N(0, 10^2) prior on the Platt slope and intercept
VOTE_NOISE_CHOICES = (0.0, 0.025, 0.05, 0.075, 0.1)  # eps: the person's inconsistency rate
# Centring target: the mean pairwise cosine of the person's images after the shift (format 6's
# constant, measured there on 19 held-out worlds).
CENTRE_COSINE = 0.5
SCALE_SHRINK = 1.0  # per-dimension scaling shrinkage (format 7's constant, 18 worlds)
PARTS = ("linear", "centroid", "nearest")
# The crowd's logit may also be added to the final score at these strengths (1: as calibrated),
# chosen by the likelihood of the blended LOO scores with the same CROWD_EVIDENCE_NATS margin:
# inside the blend the crowd is diluted by parts learnt from few votes.
CROWD_OFFSETS = (0.0, 0.5, 1.0)
# The salient prior stretches x by sqrt((var_k + SALIENT_SHRINK mean var) / ((1 + SALIENT_SHRINK)
# mean var)) along the principal directions of the person's images: the same shrinkage as
# SCALE_SHRINK, for the same reason (directions barely seen among a few images are not
# erased). 0.1 measured the same as 1 on pets (8 people, style and graded).
SALIENT_SHRINK = 1.0


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic
    return out


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    out: np.ndarray = x / np.maximum(norms, 1e-12)[:, None]
    return out


def _centring_shift(images: np.ndarray) -> np.ndarray:
    """beta * m, subtracted from every embedding (before re-normalising).

    m is the mean of the person's (unit) images and c their mean pairwise cosine. Shifted
    by beta * m, two images' mean inner product is about c (1 - beta)^2 and an image's
    squared norm 1 - 2 beta c + beta^2 c; beta makes their ratio CENTRE_COSINE. Images whose
    c is already at most that are not shifted (zero vector): a person whose images all show
    one subject has every cosine high, and the common direction says nothing about taste."""
    n, d = images.shape
    if n < 2:
        return np.zeros(d)
    m = images.astype(np.float64).mean(axis=0)
    c = (n * n * float(m @ m) - n) / (n * (n - 1))  # without each image's cosine with itself
    t = CENTRE_COSINE
    if c <= t:
        return np.zeros(d)
    beta = 1.0 - np.sqrt(max(1.0 - (c - t) / (c * (1.0 - t)), 0.0))
    shift: np.ndarray = beta * m
    return shift


def _dimension_scale(images: np.ndarray) -> np.ndarray:
    """(d,) factors, mean 1, that even out the variance of the person's images per dimension.

    A few CLIP dimensions vary far more than the rest across any set of photos and dominate
    every cosine; 1 / sqrt(var_j + SCALE_SHRINK * mean var) damps them, and the shrinkage
    keeps dimensions that barely vary among a few images from being blown up."""
    n, d = images.shape
    if n < 2:
        return np.ones(d)
    mean = images.mean(axis=0, dtype=np.float64)
    var = np.einsum("ij,ij->j", images, images, dtype=np.float64) / n - mean * mean
    var = np.maximum(var, 0.0)
    if not var.any():  # all alike: nothing to even out
        return np.ones(d)
    scale: np.ndarray = (var + SCALE_SHRINK * var.mean()) ** -0.5
    scale /= scale.mean()
    return scale


def _f_space(x: np.ndarray, shift: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float32 f(x) = unit(unit(x - shift) * scale)."""
    x64 = np.asarray(x, dtype=np.float64)
    if shift.any():
        x64 = _unit_rows(x64 - shift)
    out: np.ndarray = _unit_rows(x64 * scale).astype(np.float32)
    return out


def _salient_stretch(x: np.ndarray, unlabeled: np.ndarray | None) -> np.ndarray:
    """(d, d) symmetric map stretching x along the principal directions of the person's
    images (votes and unvoted) by sqrt of their shrunk relative variance (SALIENT_SHRINK)."""
    d = x.shape[1]
    u = np.zeros((0, d)) if unlabeled is None else np.asarray(unlabeled).reshape(-1, d)
    images = np.vstack([x, u]).astype(np.float64)
    if len(images) < 2:
        return np.eye(d)
    centred = images - images.mean(axis=0)
    ev, vec = np.linalg.eigh(centred.T @ centred / (len(images) - 1))
    ev = np.maximum(ev, 0.0)
    m = float(ev.mean())
    if m <= 0:
        return np.eye(d)
    out: np.ndarray = (
        vec * np.sqrt((ev + SALIENT_SHRINK * m) / ((1 + SALIENT_SHRINK) * m))
    ) @ vec.T
    return out


def _centroid(rows: np.ndarray) -> np.ndarray:
    return _unit(rows.astype(np.float64).mean(axis=0)) if len(rows) else np.zeros(rows.shape[1])


def cold_start_scores(
    embeddings: np.ndarray, liked: np.ndarray, disliked: np.ndarray
) -> np.ndarray:
    """The prior score for a person with no head and no crowd model.

    With c_L and c_D the normalised means of the liked and disliked embeddings and
    s_L = cos(x, c_L), s_D = cos(x, c_D):

    - no votes at all:     p = 0.5
    - likes and dislikes:  p = sigmoid(10 * (s_L - s_D))
    - only likes:          p = sigmoid((1 + s_L) / 2)   in [0.5, 0.73]
    - only dislikes:       p = sigmoid(-(1 + s_D) / 2)  in [0.27, 0.5]

    One-sided votes say what the person resembles, not where the boundary is, so the prior
    only leans gently towards (or away from) them."""
    x = np.asarray(embeddings, dtype=np.float64)
    w, b, a = _prior_linear(np.asarray(liked), np.asarray(disliked), x.shape[1])
    return _sigmoid(a * (x @ w + b))


def _prior_linear(
    liked: np.ndarray, disliked: np.ndarray, d: int
) -> tuple[np.ndarray, float, float]:
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
    """A trained per-person model; immutable after training.

    z(x) = mix[0] * (x . weights + bias) + mix[1] * f(x) . centroid + mix[2] * nn(f(x)),
    p(x) = vote_noise + (1 - 2 vote_noise) * sigmoid(platt_a * z(x) + platt_c),
    with f(x) = unit(unit(x - shift) * scale) and nn(.) the softmax-weighted (NEAREST_K,
    NEAREST_TEMPERATURE) mean of ``vote_values`` over the nearest rows of ``vote_feats``. The
    blend weights divided by each part's LOO spread are stored as ``mix``; the crowd model's
    direction times gamma is folded into ``weights`` and ``bias``."""

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
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_directory(path.parent)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

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


def _top(sims: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's min(k, columns) largest similarities, in no order."""
    n = sims.shape[1]
    k = min(k, n)
    if 0 < k < n:
        top: np.ndarray = np.argpartition(sims, n - k, axis=1)[:, n - k :]
        return top
    return np.broadcast_to(np.arange(k), (sims.shape[0], k))


def _nearest(sims: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Softmax-weighted (NEAREST_TEMPERATURE) mean of ``values`` over each row's NEAREST_K most
    similar columns; -inf similarities (a vote left out of its own score) never count."""
    top = _top(sims, NEAREST_K)
    s = np.take_along_axis(sims, top, axis=1).astype(np.float64)
    w = np.exp((s - s.max(axis=1, keepdims=True)) / NEAREST_TEMPERATURE)
    out: np.ndarray = (w * values[top]).sum(axis=1) / w.sum(axis=1)
    return out


def _ridge_loo(
    x: np.ndarray, t: np.ndarray, sw: np.ndarray, offset: np.ndarray | None
) -> tuple[float, float, np.ndarray, float, np.ndarray]:
    """Weighted ridge of targets t - gamma * offset on x; lambda and gamma >= 0 by exact LOO.

    The bias is a column of ones, penalised like the weights: centring x on the mean of all
    the votes instead leaks each vote into its own LOO refit (through the mean), and with few
    votes and little penalty the LOO scores were near perfect while new images were not.

    The hat matrix depends on lambda only, so the LOO residuals of t and of the offset come
    from the same products. For each crowd strength gamma (CROWD_STRENGTHS) lambda minimises
    the LOO squared error; gamma > 0 is kept only if its LOO scores beat gamma = 0's in
    likelihood by more than CROWD_EVIDENCE_NATS. Returns (lambda, gamma, w, b, LOO
    predictions of t); the prediction is gamma * offset + x . w + b."""
    n, d = x.shape
    root = np.sqrt(sw)
    targets = np.stack([t, np.zeros(n) if offset is None else offset], axis=1)  # (n, 2)
    tw = targets * root[:, None]
    if n <= d + 1:  # few votes: eigenvectors of the n x n kernel
        z = np.hstack([x, np.ones((n, 1))]).astype(np.float64) * root[:, None]
        s2, u = np.linalg.eigh(z @ z.T)
        s2 = np.maximum(s2, 0.0)
        zv = u * np.sqrt(s2)
        zv_t = np.sqrt(s2)[:, None] * (u.T @ tw)

        def coefficients(lam: float, target: np.ndarray) -> np.ndarray:
            out: np.ndarray = z.T @ (u @ ((u.T @ (target * root)) / (s2 + lam)))
            return out

    else:  # many votes: the (d+1)^2 Gram matrix
        z32 = np.empty((n, d + 1), dtype=np.float32)
        np.multiply(x, root[:, None], out=z32[:, :d])
        z32[:, d] = root
        s2, v = np.linalg.eigh((z32.T @ z32).astype(np.float64))
        s2 = np.maximum(s2, 0.0)
        zv = z32 @ v.astype(np.float32)
        zv_t = (zv.T @ tw.astype(np.float32)).astype(np.float64)

        def coefficients(lam: float, target: np.ndarray) -> np.ndarray:
            rhs = (zv.T @ (target * root).astype(np.float32)).astype(np.float64)
            out: np.ndarray = v @ (rhs / (s2 + lam))
            return out

    lams = np.array(RIDGE_LAMBDAS)
    inv = 1.0 / (s2[:, None] + lams[None, :])  # (r, L)
    h = ((zv * zv) @ inv.astype(zv.dtype)).astype(np.float64)  # (n, L) leverages
    scale = 1.0 / np.maximum(1.0 - h, 1e-9)
    resid = []
    for col in range(2):
        fitted = (zv @ (inv * zv_t[:, col : col + 1]).astype(zv.dtype)).astype(np.float64)
        fitted /= root[:, None]
        resid.append((targets[:, col : col + 1] - fitted) * scale)  # LOO residuals (n, L)
    e_t, e_o = resid
    strengths = (0.0,) if offset is None else CROWD_STRENGTHS
    rows = np.arange(0, n, max(1, n // MAX_NEAREST))  # enough votes to compare likelihoods
    y = (t[rows] > 0).astype(np.float64)
    best_ll, lam, gamma, loo = -np.inf, 0.0, 0.0, t
    for g in strengths:
        i = int(np.argmin(sw @ (e_t - g * e_o) ** 2))  # the first of equal errors: smallest
        cand = t - (e_t[:, i] - g * e_o[:, i])
        ll = 0.0 if len(strengths) == 1 else _fit_platt(cand[rows], y)[2]
        if g > 0:
            ll -= CROWD_EVIDENCE_NATS
        if ll > best_ll:
            best_ll, lam, gamma, loo = ll, float(lams[i]), g, cand
    beta = coefficients(lam, t - gamma * targets[:, 1])
    return lam, gamma, beta[:d], float(beta[d]), loo


def _centroid_loo(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(c_L - c_D, leave-one-out cen(x_i): each vote left out of its own centroid)."""
    sums = np.stack([x[y == 0].sum(axis=0), x[y == 1].sum(axis=0)]).astype(np.float64)
    norms = np.linalg.norm(sums, axis=1)
    safe = np.maximum(norms, 1e-12)
    unit = sums / safe[:, None]
    xs = x.astype(np.float64) @ sums.T  # (n, 2)
    sq = np.einsum("ij,ij->i", x, x).astype(np.float64)
    mine = np.where(y == 1, xs[:, 1], xs[:, 0])
    own_sq = np.where(y == 1, norms[1], norms[0]) ** 2 - 2.0 * mine + sq
    own_cos = (mine - sq) / np.maximum(np.sqrt(np.maximum(own_sq, 0.0)), 1e-12)
    alone = np.bincount(y, minlength=2)[y] == 1  # own side is x_i alone: no centroid left
    own_cos[alone] = 0.0
    other_cos = np.where(y == 1, xs[:, 0] / safe[0], xs[:, 1] / safe[1])
    loo = np.where(y == 1, own_cos - other_cos, other_cos - own_cos)
    return unit[1] - unit[0], loo


def _floored_log_likelihood(z: np.ndarray, y: np.ndarray, eps: float) -> float:
    """Log-likelihood of labels y under p = eps + (1 - 2 eps) * sigmoid(z)."""
    p = np.clip(eps + (1 - 2 * eps) * _sigmoid(z), 1e-12, 1 - 1e-12)
    return float(y @ np.log(p) + (1 - y) @ np.log(1 - p))


def _fit_platt(
    s: np.ndarray, y: np.ndarray, eps: float = 0.0, off: np.ndarray | float = 0.0
) -> tuple[float, float, float]:
    """(a, c, log-likelihood) of p = eps + (1 - 2 eps) sigmoid(a s + c), by damped Newton.

    The slope is kept in [MIN_PLATT_SLOPE, MAX_PLATT_SLOPE] per standard deviation of s: LOO
    scores of few votes can anti-correlate with them (leaving a vote out moves its side's mean
    away from it), and a negative slope would turn the ranking upside down. A weak Gaussian
    prior on (a, c) keeps them finite when the scores separate the votes."""
    sd = max(float(np.std(s)), 1e-12)
    s = s / sd

    def objective(a: float, c: float) -> float:
        return _floored_log_likelihood(a * s + c + off, y, eps) - 0.5 * PLATT_PRIOR * (
            a * a + c * c
        )

    a, c = 1.0, 0.0
    current = objective(a, c)
    for _ in range(50):
        q = _sigmoid(a * s + c + off)
        p = eps + (1 - 2 * eps) * q
        dp = (1 - 2 * eps) * q * (1 - q)
        r = dp / np.maximum(p * (1 - p), 1e-12)
        g = r * (y - p)
        fisher = r * dp
        grad = np.array([g @ s - PLATT_PRIOR * a, g.sum() - PLATT_PRIOR * c])
        info = np.array([[fisher @ (s * s), fisher @ s], [fisher @ s, fisher.sum()]])
        step = np.linalg.solve(info + PLATT_PRIOR * np.eye(2), grad)
        if (a <= MIN_PLATT_SLOPE and step[0] < 0) or (a >= MAX_PLATT_SLOPE and step[0] > 0):
            step = np.array([0.0, grad[1] / (info[1, 1] + PLATT_PRIOR)])  # slope at its bound
        # eps > 0 makes the likelihood non-concave: halve a step until it does not fall
        for _ in range(30):
            a_new = min(max(a + float(step[0]), MIN_PLATT_SLOPE), MAX_PLATT_SLOPE)
            c_new = c + float(step[1])
            new = objective(a_new, c_new)
            if new >= current:
                break
            step = step / 2
        else:
            break
        moved = max(abs(a_new - a), abs(c_new - c))
        a, c, current = a_new, c_new, new
        if moved < 1e-8:
            break
    return a / sd, c, _floored_log_likelihood(a * s + c + off, y, eps)


def _blend_grid(k: int) -> np.ndarray:
    """Every point of the k-simplex whose coordinates are multiples of 1 / BLEND_GRID."""
    pts = [c for c in itertools.product(range(BLEND_GRID + 1), repeat=k) if sum(c) == BLEND_GRID]
    return np.array(pts, dtype=np.float64) / BLEND_GRID


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
        w, b, a = _prior_linear(x[y == 1], x[y == 0], d)
        counts = {"n_train": n, "n_liked": n_pos}
        if crowd is None:
            return _linear_head(w, b, a, {"kind": "cold start", **counts, "crowd_weight": 0.0}, d)
        w = a * w + crowd.platt_a * crowd.direction
        b = a * b + crowd.platt_c
        kind = "crowd model" if n == 0 else "crowd model + cold start"
        return _linear_head(w, b, 1.0, {"kind": kind, **counts, "crowd_weight": 1.0}, d)

    # Votes: super likes weigh more, then the two sides weigh the same in total.
    sw = sw0 * np.where(y == 1, n / (2 * sw0[y == 1].sum()), n / (2 * sw0[y == 0].sum()))
    t = 2.0 * y - 1.0

    # Linear part on x, with the crowd as an offset whose strength the LOO error chooses.
    offset = None if crowd is None else crowd.logit(x)
    lam, gamma, w, b, loo_lin = _ridge_loo(x, t, sw, offset)
    # ... and the same on x stretched along the directions in which the person's images vary
    # most (a prior that a taste follows the salient visual axes more than the faint ones);
    # the person's votes choose between the two by LOO likelihood.
    stretch = _salient_stretch(x, unlabeled)
    lam2, gamma2, w2, b2, loo2 = _ridge_loo(
        (x.astype(np.float64) @ stretch).astype(np.float32), t, sw, offset
    )
    rows = np.arange(0, n, max(1, n // MAX_NEAREST))
    y_rows = (t[rows] > 0).astype(np.float64)
    salient = _fit_platt(loo2[rows], y_rows)[2] > _fit_platt(loo_lin[rows], y_rows)[2]
    if salient:
        lam, gamma, w, b, loo_lin = lam2, gamma2, stretch @ w2, b2, loo2
    if crowd is not None and gamma > 0:
        w = w + gamma * crowd.platt_a * crowd.direction
        b += gamma * crowd.platt_c

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
    parts: dict[str, np.ndarray] = {"linear": loo_lin[kept], "centroid": loo_cen[kept]}
    sims = vote_feats @ vote_feats.T
    np.fill_diagonal(sims, -np.inf)
    parts["nearest"] = _nearest(sims, vote_values)

    # The blend, from the parts' LOO scores on the kept votes.
    loo = np.stack([parts[p] for p in PARTS], axis=1)
    spread = np.maximum(loo.std(axis=0), 1e-12)
    s = loo / spread
    yk = y[kept].astype(np.float64)
    grid = _blend_grid(len(PARTS))
    lls = [_fit_platt(s @ pi, yk)[2] for pi in grid]
    pi_hat = grid[int(np.argmax(lls))]
    r = n / (n + BLEND_PRIOR_VOTES)
    pi = (1.0 - r) * np.full(len(PARTS), 1.0 / len(PARTS)) + r * pi_hat
    z = s @ pi
    best: tuple[float, float, float, float] | None = None
    crowd_kept = np.zeros(len(kept)) if crowd is None else crowd.logit(x[kept])
    best_delta, best_dll = 0.0, -np.inf
    for delta in CROWD_OFFSETS if crowd is not None else (0.0,):
        dll = _fit_platt(z, yk, 0.0, delta * crowd_kept)[2]
        dll -= CROWD_EVIDENCE_NATS if delta > 0 else 0.0
        if dll > best_dll:
            best_delta, best_dll = delta, dll
    for eps in VOTE_NOISE_CHOICES:
        a, c, ll = _fit_platt(z, yk, eps, best_delta * crowd_kept)
        if best is None or ll > best[3]:
            best = (a, c, eps, ll)
    assert best is not None
    a, c, eps, _ = best
    m = dict(zip(PARTS, pi / spread, strict=True))
    f_weights, f_bias = m["centroid"] * centroid, 0.0
    mix = np.array([m["linear"], 1.0, m["nearest"]])
    if crowd is not None and best_delta > 0:  # delta * crowd(x) folded into the linear part
        k = best_delta / (a * m["linear"])
        w = w + k * crowd.platt_a * crowd.direction
        b += k * crowd.platt_c
    meta: dict[str, Any] = {
        "kind": "blend",
        "n_train": n,
        "n_liked": n_pos,
        "lambda": lam,
        "salient_prior": bool(salient),
        "crowd_weight": gamma,
        "crowd_offset": best_delta,
        **{f"blend_{p}": float(v) for p, v in zip(PARTS, pi, strict=True)},
        "platt_a": a,
        "platt_c": c,
        "vote_noise": eps,
        "n_nearest": len(kept),
        "n_unlabeled": len(u),  # the unvoted images that shaped f-space
    }
    return TasteHead(
        weights=w,
        bias=b,
        f_weights=f_weights,
        f_bias=f_bias,
        vote_feats=vote_feats,
        vote_values=vote_values,
        shift=shift,
        scale=scale,
        mix=mix,
        platt_a=a,
        platt_c=c,
        vote_noise=eps,
        meta=meta,
    )
