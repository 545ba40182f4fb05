"""The numerics a taste head is fitted with (learner.head trains and applies it): the person's
"f-space" (centring, per-dimension scaling, the salient stretch), leave-one-out ridge and
centroid fits, the nearest-vote scores, and the Platt calibration of blended LOO scores.
Pure numpy; every constant says how it was chosen (bench/results/learning.md has the runs)."""

from __future__ import annotations

import itertools

import numpy as np

MAX_NEAREST = 2000  # votes kept for the nearest-vote part: bounds file size and scoring time
BLEND_GRID = 8  # the simplex of blend weights is searched in steps of 1/8
# Ridge penalties: LOO picks one per person. The range spans "interpolates the votes" to
# "little more than their mean".
RIDGE_LAMBDAS = tuple(float(v) for v in np.logspace(-3, 2, 11))
# Strengths of the crowd prior tried, in +-1 target units per unit of the crowd's (calibrated)
# logit. A calibrated logit o means E[target] = tanh(o / 2) ~ o / 2, so 0.5 is "as the crowd
# says"; a crowd that knows little has a flat logit and adds little at any strength.
CROWD_STRENGTHS = (0.0, 0.125, 0.25, 0.5, 1.0)
CROWD_EVIDENCE_NATS = 1.0  # the crowd prior is one more parameter: it must buy 1 nat (AIC)
NEAREST_K = 7  # votes read by the nearest-vote part (the k-NN reference's k)
NEAREST_TEMPERATURE = 0.05  # softmax temperature over their cosines in f-space
MIN_PLATT_SLOPE = 1e-3  # logit per LOO standard deviation: the ranking is kept (see _fit_platt)
MAX_PLATT_SLOPE = 4.0  # steeper saturates scores into ties
PLATT_PRIOR = 0.01  # precision of the N(0, 10^2) prior on the Platt slope and intercept
# Centring target: the mean pairwise cosine of the person's images after the shift (measured
# on 19 held-out worlds; bench/results/learning.md).
CENTRE_COSINE = 0.5
SCALE_SHRINK = 1.0  # per-dimension scaling shrinkage (measured on 18 held-out worlds)
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


def _salient_axes(
    x: np.ndarray, unlabeled: np.ndarray | None
) -> tuple[float, np.ndarray, np.ndarray]:
    """(base, vectors, factors): the salient stretch of x along the principal directions of
    the person's images (votes and unvoted) by sqrt of their shrunk relative variance
    (SALIENT_SHRINK) is ``factors`` (r,) along the orthonormal columns of ``vectors`` (d, r)
    and ``base`` on every direction orthogonal to them."""
    d = x.shape[1]
    u = np.zeros((0, d)) if unlabeled is None else np.asarray(unlabeled).reshape(-1, d)
    images = np.vstack([x, u]).astype(np.float64)
    n = len(images)
    identity = (1.0, np.zeros((d, 0)), np.zeros(0))
    if n < 2:
        return identity
    centred = images - images.mean(axis=0)
    if n <= d:
        # Fewer images than dimensions: the covariance's nonzero eigenpairs from the n x n
        # Gram matrix (n^3 instead of d^3); every other direction has variance 0.
        ev, un = np.linalg.eigh(centred @ centred.T / (n - 1))
        ev = np.maximum(ev, 0.0)
        m = float(ev.sum()) / d
        if m <= 0:
            return identity
        keep = ev > 1e-12 * ev.max()
        vec = (centred.T @ un[:, keep]) / np.sqrt((n - 1) * ev[keep])
        base = float(np.sqrt(SALIENT_SHRINK / (1 + SALIENT_SHRINK)))
        factors = np.sqrt((ev[keep] + SALIENT_SHRINK * m) / ((1 + SALIENT_SHRINK) * m))
        return base, vec, factors
    ev, vec = np.linalg.eigh(centred.T @ centred / (n - 1))
    ev = np.maximum(ev, 0.0)
    m = float(ev.mean())
    if m <= 0:
        return identity
    return 0.0, vec, np.sqrt((ev + SALIENT_SHRINK * m) / ((1 + SALIENT_SHRINK) * m))


def _salient_stretch(v: np.ndarray, axes: tuple[float, np.ndarray, np.ndarray]) -> np.ndarray:
    """Rows v (k, d) mapped by the salient stretch of ``axes`` (``_salient_axes``): through
    its r axes (2 k d r), or through the d x d map where that costs less (many rows, r > d / 2)."""
    base, vec, factors = axes
    v64 = np.asarray(v, dtype=np.float64)
    k, d = v64.shape
    if k > d and 2 * vec.shape[1] > d:
        out: np.ndarray = v64 @ (base * np.eye(d) + (vec * (factors - base)) @ vec.T)
        return out
    out = base * v64 + ((v64 @ vec) * (factors - base)) @ vec.T
    return out


def _centroid(rows: np.ndarray) -> np.ndarray:
    return _unit(rows.astype(np.float64).mean(axis=0)) if len(rows) else np.zeros(rows.shape[1])


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


# One function: one eigendecomposition serves every penalty and crowd strength tried.
def _ridge_loo(
    x: np.ndarray,
    t: np.ndarray,
    sw: np.ndarray,
    offset: np.ndarray | None,
    penalties: tuple[float, ...] = RIDGE_LAMBDAS,
) -> tuple[float, float, np.ndarray, float, np.ndarray]:
    """Weighted ridge of targets t - gamma * offset on x; lambda and gamma >= 0 by exact LOO.

    The bias is a column of ones, penalised like the weights: centring x on the mean of all
    the votes instead leaks each vote into its own LOO refit (through the mean), and with few
    votes and little penalty the LOO scores were near perfect while new images were not.

    The hat matrix depends on lambda only, so the LOO residuals of t and of the offset come
    from the same products. For each crowd strength gamma (CROWD_STRENGTHS) lambda minimises
    the LOO squared error; gamma > 0 is kept only if its LOO scores beat gamma = 0's in
    likelihood by more than CROWD_EVIDENCE_NATS. Returns (lambda, gamma, w, b, LOO
    predictions of t); the prediction is gamma * offset + x . w + b. ``penalties``: the lambdas
    tried (one: that lambda)."""
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

    lams = np.array(penalties)
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
    picks = []  # per strength, the penalty with the least LOO squared error and its scores
    for g in strengths:
        i = int(np.argmin(sw @ (e_t - g * e_o) ** 2))  # the first of equal errors: smallest
        picks.append((i, t - (e_t[:, i] - g * e_o[:, i])))
    best = 0
    if len(strengths) > 1:
        lls = _platt_fits(np.stack([cand[rows] for _, cand in picks], axis=1), y)[2]
        lls -= CROWD_EVIDENCE_NATS * (np.array(strengths) > 0)
        best = int(np.argmax(lls))  # the first of equal likelihoods: the weakest strength
    lam, gamma, loo = float(lams[picks[best][0]]), strengths[best], picks[best][1]
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


def _floored_log_likelihoods(z: np.ndarray, y: np.ndarray, eps: float | np.ndarray) -> np.ndarray:
    """(K,) log-likelihood of labels y (n,) under p = eps + (1 - 2 eps) * sigmoid(z), per
    column of z (n, K)."""
    p = np.clip(eps + (1 - 2 * eps) * _sigmoid(z), 1e-12, 1 - 1e-12)
    out: np.ndarray = y @ np.log(p) + (1 - y) @ np.log(1 - p)
    return out


def _platt_fits(
    s: np.ndarray,
    y: np.ndarray,
    eps: float | np.ndarray = 0.0,
    off: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, c, log-likelihood), each (K,): p = eps_j + (1 - 2 eps_j) sigmoid(a_j s_j + c_j +
    off_j) fitted to labels y (n,) for every column j of s (n, K), by damped Newton, all
    columns at once. Each of s, ``eps`` and ``off`` may instead be one column that every fit
    shares: s (n, 1), eps a number, off (n, 1) or None; K is the widest.

    The slope is kept in [MIN_PLATT_SLOPE, MAX_PLATT_SLOPE] per standard deviation of s_j: LOO
    scores of few votes can anti-correlate with them (leaving a vote out moves its side's mean
    away from it), and a negative slope would turn the ranking upside down. A weak Gaussian
    prior on (a, c) keeps them finite when the scores separate the votes."""
    sd = np.maximum(s.std(axis=0), 1e-12)
    s = s / sd
    shift: np.ndarray | float = 0.0 if off is None else off
    k = np.broadcast_shapes(s.shape, np.shape(shift), np.shape(eps))[-1]
    e = np.broadcast_to(np.asarray(eps, dtype=np.float64), (k,))

    def objective(a: np.ndarray, c: np.ndarray) -> np.ndarray:
        ll = _floored_log_likelihoods(s * a + c + shift, y, e)
        out: np.ndarray = ll - 0.5 * PLATT_PRIOR * (a * a + c * c)
        return out

    a, c = np.ones(k), np.zeros(k)
    current = objective(a, c)
    active = np.ones(k, dtype=bool)
    for _ in range(50):
        step_a, step_c = _platt_step(s, y[:, None], e, s * a + c + shift, a, c)
        step_a, step_c = np.where(active, step_a, 0.0), np.where(active, step_c, 0.0)
        # eps > 0 makes the likelihood non-concave: halve a step until it does not fall
        pending = active.copy()
        a_new, c_new, new = a.copy(), c.copy(), current.copy()
        for _ in range(30):
            a_try = np.clip(a + step_a, MIN_PLATT_SLOPE, MAX_PLATT_SLOPE)
            c_try = c + step_c
            val = objective(a_try, c_try)
            ok = pending & (val >= current)
            a_new[ok], c_new[ok], new[ok] = a_try[ok], c_try[ok], val[ok]
            pending &= ~ok
            if not pending.any():
                break
            step_a, step_c = step_a / 2, step_c / 2
        active &= ~pending  # no step that does not fall: that column stops where it is
        moved = np.maximum(np.abs(a_new - a), np.abs(c_new - c))
        a, c, current = a_new, c_new, new
        active &= moved >= 1e-8
        if not active.any():
            break
    return a / sd, c, _floored_log_likelihoods(s * a + c + shift, y, e)


def _platt_step(
    s: np.ndarray, y: np.ndarray, e: np.ndarray, z: np.ndarray, a: np.ndarray, c: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Every column's Newton step (in a, in c) for ``_platt_fits`` at logits z = a s + c + off:
    the Fisher information stands in for the Hessian (the same where eps is 0), and a slope at
    a bound it would cross stays there while the intercept is fitted alone."""
    q = _sigmoid(z)
    p = e + (1 - 2 * e) * q
    dp = (1 - 2 * e) * q * (1 - q)
    r = dp / np.maximum(p * (1 - p), 1e-12)
    g = r * (y - p)
    fisher = r * dp
    grad_a = (g * s).sum(axis=0) - PLATT_PRIOR * a
    grad_c = g.sum(axis=0) - PLATT_PRIOR * c
    i11 = (fisher * s * s).sum(axis=0) + PLATT_PRIOR
    i12 = (fisher * s).sum(axis=0)
    i22 = fisher.sum(axis=0) + PLATT_PRIOR
    det = i11 * i22 - i12 * i12
    step_a = (i22 * grad_a - i12 * grad_c) / det
    step_c = (i11 * grad_c - i12 * grad_a) / det
    bound = ((a <= MIN_PLATT_SLOPE) & (step_a < 0)) | ((a >= MAX_PLATT_SLOPE) & (step_a > 0))
    return np.where(bound, 0.0, step_a), np.where(bound, grad_c / i22, step_c)


def _fit_platt(
    s: np.ndarray, y: np.ndarray, eps: float = 0.0, off: np.ndarray | float = 0.0
) -> tuple[float, float, float]:
    """(a, c, log-likelihood) of p = eps + (1 - 2 eps) sigmoid(a s + c + off) for one score
    column s (``_platt_fits``)."""
    s = np.asarray(s, dtype=np.float64)
    column = np.broadcast_to(np.asarray(off, dtype=np.float64), s.shape)[:, None]
    a, c, ll = _platt_fits(s[:, None], y, eps, column)
    return float(a[0]), float(c[0]), float(ll[0])


def _blend_grid(k: int) -> np.ndarray:
    """Every point of the k-simplex whose coordinates are multiples of 1 / BLEND_GRID."""
    pts = [c for c in itertools.product(range(BLEND_GRID + 1), repeat=k) if sum(c) == BLEND_GRID]
    return np.array(pts, dtype=np.float64) / BLEND_GRID
