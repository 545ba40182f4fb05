"""bench.bounds: learners told the hidden taste, as upper references for issue 22's targets."""

from pathlib import Path

import numpy as np

from bench import bounds, learning


def _world(tmp_path: Path) -> learning.World:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 32))
    cls = rng.integers(0, 8, 1000)
    x = centres[cls] + 0.5 * rng.normal(size=(1000, 32))
    path = tmp_path / "c8.npz"
    np.savez(path, embeddings=x.astype(np.float16), labels=cls)
    return learning.World(*learning.load(path))


def test_the_hidden_tastes_are_the_benchmarks_own(tmp_path: Path) -> None:
    world = _world(tmp_path)
    for u in range(3):
        _, drawn = learning.graded_truth(world, np.random.default_rng(u))
        liked, _ = learning.taste(world, "graded", np.random.default_rng(u))
        assert np.array_equal(drawn, liked)
        classes, _, z = learning.mixed_truth(world, np.random.default_rng(u))
        liked, _ = learning.taste(world, "mixed", np.random.default_rng(u))
        top = z >= np.quantile(z, 1.0 - learning.MIXED_FRACTION)
        assert np.array_equal(np.isin(world.labels, classes) | top, liked)


def test_told_the_hidden_taste_they_beat_a_learner_that_is_not(tmp_path: Path) -> None:
    world = _world(tmp_path)
    out = bounds.bounds(world, 3)
    lr = {"graded": [], "mixed": []}
    for kind in lr:
        for u in range(3):
            p = learning.simulate_person(world, u, kind)
            scores = learning.logistic_regression(
                world.x[p.stream[:200]], p.liked[:200], p.weights[:200], world.x[p.test]
            )
            lr[kind].append(learning.roc_auc(p.test_true, scores))
    assert out["graded_ceiling"] > np.mean(lr["graded"])
    # told where tastes lie but not the direction: below the ceiling, which knows it
    subspace = out["graded_subspace"]
    assert set(subspace) == {str(c) for c in bounds.SUBSPACE_CS}
    assert all(0.5 < subspace[c]["200"] < out["graded_ceiling"] for c in subspace)
    assert out["mixed_oracle"]["200"] > np.mean(lr["mixed"])
    assert set(out["mixed_oracle"]) == {"20", "50", "100", "200"}


def test_the_graded_calibration_references_are_the_truths_and_a_told_learners(
    tmp_path: Path,
) -> None:
    """The truth's ECE is that of sigmoid(2z - 1.2) on each person's test votes; a learner
    told z but calibrated on 20 votes is further from calibrated than the truth."""
    world = _world(tmp_path)
    out = bounds.bounds(world, 3)
    by_hand = []
    for u in range(3):
        z, _ = learning.graded_truth(world, np.random.default_rng(u))
        p = learning.simulate_person(world, u, "graded")
        truth = 1.0 / (1.0 + np.exp(-(2.0 * z - 1.2)))
        by_hand.append(learning.expected_calibration_error(p.test_votes, truth[p.test]))
    assert out["graded_truth_ece"] == np.mean(by_hand)
    told = out["graded_told_ece"]
    assert set(told) == {"20", "50", "100", "200"}
    assert told["20"] > out["graded_truth_ece"]
