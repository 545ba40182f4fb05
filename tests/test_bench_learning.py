"""bench.learning: the benchmark issue 3's numbers come from, on files it has never seen."""

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


def test_json_has_every_learner_and_skips_budgets_beyond_the_stream(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _clustered_npz(tmp_path / "c8.npz")  # stream: 420 images, so no budget 500
    learning.main(["--data", str(data), "--users", "2", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {learning.PROJECT, *learning.REFERENCES, *learning.NOT_LEARNERS}
    for name in [learning.PROJECT, *learning.REFERENCES]:
        assert out[name]["500"] is None  # skipped, not trained on 420 votes and labelled 500
        assert all(0.0 <= out[name][str(b)] <= 1.0 for b in (10, 20, 50, 100, 200))
    assert out[learning.PROJECT]["200"] > 0.9  # whole clusters: learnt
    assert out["ece"]["500"] is None and 0.0 <= out["ece"]["200"] <= 1.0
    assert out["train_s"]["200"] > 0.0


def test_table_and_targets_are_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _clustered_npz(tmp_path / "c8.npz", n=1000)
    learning.main(["--data", str(data), "--users", "1", "--unvoted", "all"])
    text = capsys.readouterr().out
    assert "unvoted: all" in text
    assert "| project training time (ms) |" in text
    assert sum(line.startswith("budget ") for line in text.splitlines()) == 4
    assert "mean 20-200:" in text and "ECE at 200:" in text


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
    # float labels are classes by value, not truncated to ints (0.3 and 0.6 used to be 0)
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


def test_an_npy_file_or_a_one_class_subset_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    npy = tmp_path / "x.npy"
    np.save(npy, np.ones((5, 4)))
    one = tmp_path / "one.npz"
    np.savez(one, embeddings=np.ones((5, 4)), labels=np.zeros(5))
    for argv in (["--data", str(npy)], ["--data", str(one), "--classes", "0.5"]):
        with pytest.raises(SystemExit) as exit_info:
            learning.main(argv)
        assert exit_info.value.code == 2
        assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--users", "0"],
        ["--unvoted", "-1"],
        ["--unvoted", "x"],
        ["--unvoted", "inf"],
        ["--class-seed", "-20000"],
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


def test_cost_runs_on_a_file_with_fewer_than_ten_classes(tmp_path: Path) -> None:
    x, labels = learning.load(_clustered_npz(tmp_path / "c8.npz"))
    three = labels % 3
    c = learning.cost(x, three, reps=1)  # it used to draw 10 liked classes out of 3
    assert c["train_s_median"] > 0 and c["predict_ms_median"] > 0
