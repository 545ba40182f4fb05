"""The cold-start score leans the way the reply's "closest liked / disliked" lines do."""

from __future__ import annotations

import numpy as np

from learner.prior import nearest_vote_scores


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_the_score_leans_towards_whichever_vote_is_nearest() -> None:
    rng = np.random.default_rng(0)
    liked = _unit(rng.standard_normal((3, 16)))
    disliked = _unit(rng.standard_normal((4, 16)))
    x = _unit(rng.standard_normal((200, 16)))
    scores = nearest_vote_scores(x, liked, disliked)
    nearest_like = (x @ liked.T).max(axis=1)
    nearest_dislike = (x @ disliked.T).max(axis=1)
    assert np.array_equal(scores > 0.5, nearest_like > nearest_dislike)


def test_the_case_a_centroid_got_wrong() -> None:
    """Near one disliked image (0.95) and less near every liked one (0.85): a centroid of the
    likes can still sit closer than the dislikes' centroid, and scored this 93%."""
    image = np.array([1.0, 0.0, 0.0])
    disliked = np.array([[0.95, np.sqrt(1 - 0.95**2), 0.0], [-1.0, 0.0, 0.0]])
    liked = np.array([[0.85, 0.0, np.sqrt(1 - 0.85**2)], [0.85, 0.0, -np.sqrt(1 - 0.85**2)]])
    assert nearest_vote_scores(image[None], liked, disliked)[0] < 0.5


def test_one_sided_and_no_votes_stay_near_even() -> None:
    x = _unit(np.random.default_rng(1).standard_normal((50, 8)))
    liked = x[:2]
    assert np.all(nearest_vote_scores(x, np.zeros((0, 8)), np.zeros((0, 8))) == 0.5)
    only_likes = nearest_vote_scores(x, liked, np.zeros((0, 8)))
    assert np.all((only_likes >= 0.5) & (only_likes <= 0.74))
    only_dislikes = nearest_vote_scores(x, np.zeros((0, 8)), liked)
    assert np.all((only_dislikes <= 0.5) & (only_dislikes >= 0.26))
