"""The score before a person's first head, when there is no crowd model either: what their few
votes say about an image, from the nearest image they liked and the nearest they disliked.

The reply explains a score with the same two similarities ("closest liked 0.85", "closest
disliked 0.95"), so the score and the lines under it always lean the same way.
"""

from __future__ import annotations

import numpy as np

STRENGTH = 10.0  # logit per unit of cosine: 0.1 closer to a like than a dislike is ~73%


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
