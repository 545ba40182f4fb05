"""Scores before a person's first head. The bot's (no crowd model either): what their few
votes say about an image, from the nearest image they liked and the nearest they disliked.
The head's own fallback with votes on one side only (``cold_start_scores``, ``prior_linear``):
the liked and disliked centroids, to which train_head adds the crowd model.

The reply explains a score with the same two similarities ("closest liked 0.85", "closest
disliked 0.95"), so the score and the lines under it always lean the same way.
"""

from __future__ import annotations

import numpy as np

from learner.head_fit import _centroid

STRENGTH = 10.0  # logit per unit of cosine: 0.1 closer to a like than a dislike is ~73%
PRIOR_STRENGTH = 10.0  # cold-start prior: logit per unit of (cos to liked - cos to disliked)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * z))
    return out


def nearest_vote_scores(
    embeddings: np.ndarray, liked: np.ndarray, disliked: np.ndarray
) -> np.ndarray:
    """P(like) of each row of ``embeddings`` (L2-normalised), from the person's liked and
    disliked image vectors:

    - no votes:                  0.5
    - likes and dislikes:        sigmoid(STRENGTH * (nearest liked - nearest disliked))
    - only likes (only dislikes): leans gently towards (away from) the nearest one, in
      [0.5, 0.73] ([0.27, 0.5]): one-sided votes say what the person resembles, not where
      the boundary is.
    """
    x = np.asarray(embeddings, dtype=np.float64).reshape(len(embeddings), -1)
    d = x.shape[1]
    like = np.asarray(liked, dtype=np.float64).reshape(-1, d)
    dislike = np.asarray(disliked, dtype=np.float64).reshape(-1, d)
    near_like = (x @ like.T).max(axis=1) if len(like) else None
    near_dislike = (x @ dislike.T).max(axis=1) if len(dislike) else None
    if near_like is not None and near_dislike is not None:
        return _sigmoid(STRENGTH * (near_like - near_dislike))
    if near_like is not None:
        return _sigmoid((1.0 + near_like) / 2.0)
    if near_dislike is not None:
        return _sigmoid(-(1.0 + near_dislike) / 2.0)
    return np.full(len(x), 0.5)


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
    w, b, a = prior_linear(np.asarray(liked), np.asarray(disliked), x.shape[1])
    return _sigmoid(a * (x @ w + b))


def prior_linear(
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
