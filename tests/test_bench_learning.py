"""bench.learning: the benchmark issue 22's numbers come from, on files it has never seen."""

import json
from pathlib import Path

import numpy as np
import pytest

from bench import learning


def _clustered_npz(path: Path, labels: np.ndarray | None = None, n: int = 600) -> Path:
    """Eight tight clusters in 32-d: a taste of whole clusters is easy to learn."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 32))
    cls = rng.integers(0, 8, n)
    x = centres[cls] + 0.3 * rng.normal(size=(n, 32))  # not normalised: load does it
    np.savez(path, embeddings=x.astype(np.float16), labels=cls if labels is None else labels)
    return path


def _world(tmp_path: Path, n: int = 600) -> learning.World:
    return learning.World(*learning.load(_clustered_npz(tmp_path / "c8.npz", n=n)))


def test_json_has_every_kind_learner_and_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(learning, "REFERENCES", {"centroids": learning.centroids})  # fast
    data = _clustered_npz(tmp_path / "c8.npz")  # stream: 420 images, so no budget 500
    argv = ["--users", "2", "--json", "--kinds", "subjects,crowd", "--workers", "1"]
    learning.main(["--data", str(data), *argv])
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"subjects", "crowd", *learning.NOT_KINDS}
    for kind in ("subjects", "crowd"):
        assert set(out[kind]) == {learning.PROJECT, "centroids"}
        assert set(out[kind][learning.PROJECT]) == {str(b) for b in learning.PROJECT_BUDGETS}
        assert set(out[kind]["centroids"]) == {str(b) for b in learning.BUDGETS}  # no "0"
        for name in out[kind]:
            assert out[kind][name]["500"] is None  # skipped, not trained on 420 votes
            assert all(0.0 <= out[kind][name][str(b)] <= 1.0 for b in (10, 20, 50, 100, 200))
        assert out["ece"][kind]["500"] is None and 0.0 <= out["ece"][kind]["200"] <= 1.0
        assert out["train_s"][kind]["200"] > 0.0
    assert out["subjects"][learning.PROJECT]["200"] > 0.9  # whole clusters: learnt
    # everyone shares part of a `crowd` taste: the crowd model ranks before the first vote
    assert out["crowd"][learning.PROJECT]["0"] > 0.7


def test_tables_and_targets_are_printed_per_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(learning, "REFERENCES", {"centroids": learning.centroids})
    data = _clustered_npz(tmp_path / "c8.npz", n=1000)
    learning.main(["--data", str(data), "--users", "1", "--kinds", "style,crowd", "--workers", "1"])
    text = capsys.readouterr().out
    assert "| style | 0 | 10 |" in text and "| crowd | 0 | 10 |" in text
    assert text.count("| best reference |") == 2 and text.count("| margin |") == 2
    assert sum(line.startswith("budget ") for line in text.splitlines()) == 8
    assert "target +0.005" in text  # style's mean margin target
    assert "0 votes:" in text and "20 votes:" in text  # crowd's targets
    assert text.count("ECE at 200:") == 2


def test_the_mean_margin_and_its_standard_error_are_over_people(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refs = {"centroids": learning.centroids, "k-NN": learning.knn}
    monkeypatch.setattr(learning, "REFERENCES", refs)
    # no crowd model: the margin's arithmetic is the same, and training it is most of the time
    results = learning.run_kinds(_world(tmp_path, n=1000), ["style"], 3, use_crowd=False)
    s = learning.summary(results)
    t, r = s["style"], results["style"]
    best = {b: max(refs, key=lambda n: t[n][str(b)] or 0.0) for b in learning.TARGET_BUDGETS}
    per_person = [
        np.mean([r.auc[learning.PROJECT][b][u] - r.auc[best[b]][b][u] for b in best])
        for u in range(3)
    ]
    margin = s["margin"]["style"]
    assert margin["people"] == 3
    # the mean of people's margins is the margin of the means that the targets read ...
    table_margin = np.mean(
        [(t[learning.PROJECT][str(b)] or 0.0) - t[best[b]][str(b)] for b in best]
    )
    assert margin["mean"] == pytest.approx(table_margin, abs=1e-12)
    # ... and its standard error is over those people
    assert margin["se"] == pytest.approx(np.std(per_person, ddof=1) / np.sqrt(3), rel=1e-9)
    assert margin["se"] > 0.0
    assert f"+- {margin['se']:.4f} s.e." in "\n".join(learning.targets(s, "style"))
    # ECE at 200 votes: its standard error over the same people, and its calibrated floor
    ece = r.ece_votes[200]
    assert s["ece_se"]["style"]["200"] == pytest.approx(np.std(ece, ddof=1) / np.sqrt(3))
    assert s["ece_floor"]["style"]["200"] == pytest.approx(np.mean(r.ece_floor[200]))
    ece_line = learning.targets(s, "style")[-1]
    assert f"+- {s['ece_se']['style']['200']:.4f} s.e." in ece_line
    floor = s["ece_floor"]["style"]["200"]
    assert f"{floor:.3f} if these probabilities were calibrated" in ece_line


def test_the_ece_floor_is_what_calibrated_probabilities_score(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Votes drawn from the probabilities themselves: for one probability of 1/2 ECE is
    |mean vote - 1/2|, whose mean is sqrt(2 / (pi n)) / 2; a pool four times as large halves
    it; miscalibrated probabilities score above it."""
    monkeypatch.setattr(learning, "ECE_FLOOR_DRAWS", 400)
    rng = np.random.default_rng(0)
    n = 2500
    expected = np.sqrt(2.0 / (np.pi * n)) / 2.0
    assert learning.calibrated_ece(np.full(n, 0.5), rng) == pytest.approx(expected, rel=0.1)
    spread = rng.uniform(0.0, 1.0, 4 * n)
    small, large = learning.calibrated_ece(spread[:n], rng), learning.calibrated_ece(spread, rng)
    assert small / large == pytest.approx(2.0, rel=0.1)
    votes = rng.random(n) < spread[:n]
    miscalibrated = np.clip(spread[:n] + 0.1, 0.0, 1.0)
    assert learning.expected_calibration_error(votes, miscalibrated) > 2 * small


def test_each_kind_labels_as_the_data_readme_defines(tmp_path: Path) -> None:
    world = _world(tmp_path, 1000)
    rng = np.random.default_rng
    liked, super_ = learning.taste(world, "style", rng(3))
    assert liked.mean() == pytest.approx(0.3, abs=0.01)
    assert super_.mean() == pytest.approx(0.05, abs=0.01) and not (super_ & ~liked).any()
    # style: the top 30% along w = sum_k g_k s_k v_k, g the rng's first 20 normals
    z = world.style_score(rng(3).standard_normal(20))
    assert liked.sum() == (z >= np.quantile(z, 0.7)).sum() and z[liked].min() >= z[~liked].max()
    liked, _ = learning.taste(world, "subjects", rng(3))
    assert all(len(set(liked[world.labels == c])) == 1 for c in range(8))  # whole classes
    graded, _ = learning.taste(world, "graded", rng(3))
    assert 0.1 < graded.mean() < 0.5 and z[graded].mean() > z[~graded].mean()
    # crowd: everyone's taste leans the same way
    a, _ = learning.taste(world, "crowd", rng(1))
    b, _ = learning.taste(world, "crowd", rng(2))
    assert (a & b).sum() > 0.3 * 0.3 * len(a) * 1.5
    with pytest.raises(ValueError, match="unknown kind"):
        learning.taste(world, "cats", rng(0))


def test_graded_votes_are_not_flipped_and_others_are(tmp_path: Path) -> None:
    world = _world(tmp_path, 1000)
    for kind in ("graded", "style"):
        p = learning.simulate_person(world, 4, kind)
        truth, _ = learning.taste(world, kind, np.random.default_rng(4))
        disagree = float((p.liked != truth[p.stream]).mean())
        if kind == "graded":
            assert disagree == 0.0
            np.testing.assert_array_equal(p.test_votes, p.test_true)
        else:
            assert 0.05 < disagree < 0.15


def test_the_crowd_never_votes_on_the_test_pool(tmp_path: Path) -> None:
    world = _world(tmp_path)
    p = learning.simulate_person(world, 2, "crowd")
    idx, liked, weights, ids = learning.simulate_crowd(world, "crowd", p, 2)
    assert len(idx) == 50 * 200 and set(np.unique(ids)) == set(range(1000, 1050))
    assert not np.isin(idx, p.test).any() and np.isin(idx, p.stream).all()
    assert set(np.unique(weights)) <= {1.0, learning.SUPER_LIKE_WEIGHT}
    assert liked.dtype == bool and 0.2 < liked.mean() < 0.4
    # the same crowd for every budget, redrawn for another person
    again = learning.simulate_crowd(world, "crowd", p, 2)
    np.testing.assert_array_equal(again[0], idx)
    other = learning.simulate_person(world, 3, "crowd")
    assert not np.array_equal(learning.simulate_crowd(world, "crowd", other, 3)[0], idx)


def test_the_unvoted_images_a_person_has_sent() -> None:
    stream = np.arange(100)
    assert len(learning.unvoted_images(stream, 20, 0.0)) == 0  # the protocol: votes on all
    np.testing.assert_array_equal(learning.unvoted_images(stream, 20, 1.5), np.arange(20, 50))
    np.testing.assert_array_equal(learning.unvoted_images(stream, 20, None), np.arange(20, 100))
    np.testing.assert_array_equal(learning.unvoted_images(stream, 80, 1.0), np.arange(80, 100))


def test_labels_of_any_type_and_shape_are_classes(tmp_path: Path) -> None:
    names = np.array(["cat", "dog", "fern", "rose", "bus", "car", "tree", "sky"])
    cls = np.random.default_rng(0).integers(0, 8, 600)
    data = _clustered_npz(tmp_path / "s.npz", names[cls].reshape(-1, 1))
    x, labels = learning.load(data)
    assert x.shape == (600, 32) and labels.shape == (600,)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    assert len(np.unique(labels)) == 8 and labels.max() == 7
    floats = _clustered_npz(tmp_path / "f.npz", np.array([0.0, 0.3, 0.6])[cls % 3])
    assert len(np.unique(learning.load(floats)[1])) == 3


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"embeddings": np.ones((5, 4))}, "no ['labels']"),
        ({"embeddings": np.ones((5, 4)), "labels": np.zeros(4)}, "4 labels for 5 embeddings"),
        ({"embeddings": np.ones((5, 4)), "labels": np.zeros(5)}, "one class only"),
        (
            {"embeddings": np.vstack([np.ones((4, 4)), np.zeros((1, 4))]), "labels": np.arange(5)},
            "1 embeddings are zero or not finite (rows [4])",
        ),
        (
            {"embeddings": np.vstack([np.ones((4, 4)), [[np.nan] * 4]]), "labels": np.arange(5)},
            "not finite",
        ),
    ],
)
def test_a_file_it_cannot_use_is_one_clear_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    arrays: dict[str, np.ndarray],
    message: str,
) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    with pytest.raises(SystemExit) as exit_info:
        learning.main(["--data", str(path), "--users", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--users", "0"],
        ["--unvoted", "-1"],
        ["--unvoted", "x"],
        ["--unvoted", "inf"],
        ["--class-seed", "-20000"],
        ["--kinds", "subjects,cats"],
        ["--kinds", ""],
        ["--workers", "0"],
    ],
)
def test_bad_arguments_are_refused_before_the_run(tmp_path: Path, argv: list[str]) -> None:
    data = _clustered_npz(tmp_path / "c8.npz")
    with pytest.raises(SystemExit) as exit_info:
        learning.main(["--data", str(data), *argv])
    assert exit_info.value.code == 2


def test_a_plot_into_a_missing_directory_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _clustered_npz(tmp_path / "c8.npz")
    with pytest.raises(SystemExit):
        learning.main(["--data", str(data), "--plot", str(tmp_path / "no" / "p.png")])
    assert "no directory" in capsys.readouterr().err


def test_people_on_worker_processes_give_the_figures_of_one_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _clustered_npz(tmp_path / "c8.npz")
    runs = []
    for workers in ("1", "2"):
        argv = ["--users", "3", "--kinds", "style,mixed", "--no-references", "--json"]
        learning.main(["--data", str(data), *argv, "--workers", workers])
        out = json.loads(capsys.readouterr().out)
        del out["train_s"]  # timings differ
        runs.append(_flat(out))
    assert runs[0].keys() == runs[1].keys()
    # One process may run BLAS on two threads, a worker runs it on one: the same sums in
    # another order differ in the last bits (1e-10 seen on an AVX2 EPYC), nothing more.
    assert runs[1] == pytest.approx(runs[0], rel=1e-7, abs=1e-9, nan_ok=True)
    # and the people were not all the same person
    assert runs[0][f"style/{learning.PROJECT}/50"] != runs[0][f"mixed/{learning.PROJECT}/50"]


def _flat(tree: dict[str, object], prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1, "c": None}} -> {"a/b": 1, "a/c": nan} (a budget not run is None)."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = float("nan") if value is None else value
    return out


def test_cost_runs_on_a_file_with_fewer_than_ten_classes(tmp_path: Path) -> None:
    x, labels = learning.load(_clustered_npz(tmp_path / "c8.npz"))
    c = learning.cost(x, labels % 3, reps=1, votes=500, people=20)
    assert c["train_s_median"] > 0 and c["predict_ms_median"] > 0 and c["crowd_train_s"] > 0
