"""ROC AUC and ECE against hand-computed values."""

import numpy as np
import pytest

from learner.metrics import expected_calibration_error, roc_auc


def test_auc_perfect_and_reversed() -> None:
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0


def test_auc_hand_computed() -> None:
    # Pairs (pos, neg): (0.8,0.1) win, (0.8,0.9) lose, (0.4,0.1) win, (0.4,0.9) lose -> 2/4.
    y = np.array([1, 0, 1, 0])
    assert roc_auc(y, np.array([0.8, 0.1, 0.4, 0.9])) == pytest.approx(0.5)
    # 3 positives, 2 negatives: pairs won = 5 of 6.
    y = np.array([1, 1, 1, 0, 0])
    s = np.array([0.9, 0.7, 0.2, 0.5, 0.1])
    assert roc_auc(y, s) == pytest.approx(5 / 6)


def test_auc_ties_count_half() -> None:
    y = np.array([1, 0, 1, 0])
    assert roc_auc(y, np.full(4, 0.3)) == pytest.approx(0.5)
    # pos 0.5 ties neg 0.5 (1/2), beats neg 0.1 (1); pos 0.9 beats both (2) -> 3.5 / 4
    assert roc_auc(y, np.array([0.5, 0.5, 0.9, 0.1])) == pytest.approx(3.5 / 4)


def test_auc_matches_pairwise_count_on_random_data() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = rng.integers(0, 20, 300).astype(float)  # many ties
    pos, neg = s[y == 1], s[y == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert roc_auc(y, s) == pytest.approx(pairs / (len(pos) * len(neg)))


def test_auc_one_class_is_none() -> None:
    assert roc_auc(np.ones(3), np.array([0.1, 0.2, 0.3])) is None
    assert roc_auc(np.zeros(2), np.array([0.1, 0.2])) is None


def test_ece_hand_computed() -> None:
    # Bin [0.2, 0.3): probs 0.25, 0.25, labels 0, 1 -> |0.5 - 0.25| = 0.25, weight 2/4.
    # Bin [0.9, 1.0]: probs 0.95, 1.0, labels 1, 1 -> |1 - 0.975| = 0.025, weight 2/4.
    y = np.array([0, 1, 1, 1])
    p = np.array([0.25, 0.25, 0.95, 1.0])
    assert expected_calibration_error(y, p) == pytest.approx(0.5 * 0.25 + 0.5 * 0.025)


def test_ece_perfectly_calibrated_is_zero() -> None:
    y = np.array([1, 0, 1, 0, 1, 1, 1, 0])
    p = np.array([0.5, 0.5, 0.5, 0.5, 0.75, 0.75, 0.75, 0.75])
    assert expected_calibration_error(y, p) == pytest.approx(0.0)


def test_ece_bins_parameter() -> None:
    y = np.array([1, 0])
    p = np.array([0.6, 0.4])
    # One bin: |0.5 - 0.5| = 0. Ten bins: each point alone -> (0.4 + 0.4) / 2.
    assert expected_calibration_error(y, p, bins=1) == pytest.approx(0.0)
    assert expected_calibration_error(y, p) == pytest.approx(0.4)
