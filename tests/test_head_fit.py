"""learner.head_fit's choice of the ridge penalty from LOO squared errors."""

import numpy as np

from learner.head_fit import _penalty_index


def test_penalty_is_the_middle_of_those_within_one_standard_error() -> None:
    base = np.linspace(0.5, 1.5, 40)[:, None]  # LOO squared error of each vote, column 1
    swing = np.where(np.arange(40) % 2 == 0, 0.5, -0.5)[:, None] + 0.01  # tot. +0.4, se 3.2
    errors = np.hstack([base + 1.0, base, base + swing, base + swing, base + 1.0])
    assert _penalty_index(errors) == 2  # the least total is column 1; the band is 1..3
    errors[:, 3] += 0.2  # now clearly worse (+8 in total, the same spread): band 1..2
    assert _penalty_index(errors) == 1


def test_one_clear_minimum_is_kept() -> None:
    errors = np.tile(np.array([3.0, 1.0, 3.0]), (20, 1))
    assert _penalty_index(errors) == 1
    assert _penalty_index(np.ones((5, 4))) == 1  # all equal: the middle of the grid (0..3)
