"""Learning curves of the project's taste head against reference learners.

Runs the simulated-user protocol of ``../shared/data/README.md`` on any npz with
``embeddings`` (N, d) and ``labels`` (N,):

    python -m bench.learning --data ../shared/data/clip-vit-b32/pets.npz [--users 20]
        [--json] [--plot out.png] [--classes 0.5 --class-seed 1] [--unvoted R|all] [--cost]

The project learner is ``learner.head.train_head`` itself (the code the bot runs).
By default each person votes on every image they send, as in the protocol, so after B
votes the head has those B images and nothing else; ``--unvoted R`` has them send R more
images per vote without voting (the bot gives a head the images its person sent unvoted),
``--unvoted all`` every stream image not yet voted on. ``--json`` prints a summary: one
entry per learner (budget -> mean AUC, null for a budget larger than the stream), and
``ece``, ``ece_true_labels`` and ``train_s`` (the project head's, per budget).
``--classes F`` keeps a random fraction F of the classes: a held-out world to check
that the design is not tuned to the three files. ``--cost`` only times the head: training
one person with 10,000 votes and 2,000 unvoted images (the file's images resampled with a
little jitter), and scoring one image.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from learner.head import DISLIKE, LIKE, SUPER_LIKE, train_head
from learner.metrics import expected_calibration_error, roc_auc

BUDGETS = (10, 20, 50, 100, 200, 500)
TARGET_BUDGETS = (20, 50, 100, 200)
LIKED_FRACTION = 0.30
TEST_FRACTION = 0.30
FLIP_PROBABILITY = 0.10
PROJECT = "project head"

# A learner maps (train embeddings, vote codes, unlabeled embeddings, test embeddings)
# to scores on the test embeddings, or None when it can only output a constant.
Learner = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray | None]


class DataError(ValueError):
    """The file cannot be benchmarked; the message says why."""


def load(path: Path, classes: float = 1.0, class_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings as float32 re-normalised, labels as 0..C-1; optionally a subset of classes.

    Labels may be of any type np.unique sorts (ints, floats, strings): each distinct value is
    a class. Raises DataError for what would otherwise fail deep inside a learner, or
    silently give a meaningless table."""
    if not 0.0 < classes <= 1.0:
        raise DataError(f"--classes must be in (0, 1], got {classes}")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz ({e})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):  # a bare .npy array
        raise DataError(f"{path}: an .npy array, not an .npz with embeddings and labels")
    with z:
        missing = {"embeddings", "labels"} - set(z.files)
        if missing:
            raise DataError(f"{path}: no {sorted(missing)} in the file (it has {z.files})")
        try:
            x = z["embeddings"].astype(np.float32)
            raw_labels = z["labels"]
        except (ValueError, TypeError) as e:  # e.g. object arrays, which need pickle
            raise DataError(f"{path}: unreadable arrays ({e})") from None
    if x.ndim != 2 or len(x) == 0:
        raise DataError(f"{path}: embeddings must be (N, d), got shape {x.shape}")
    if raw_labels.size != len(x):
        raise DataError(f"{path}: {raw_labels.size} labels for {len(x)} embeddings")
    raw_labels = raw_labels.reshape(-1)  # (N, 1) too
    norms = np.linalg.norm(x, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if len(bad):
        raise DataError(
            f"{path}: {len(bad)} embeddings are zero or not finite (rows {bad[:5].tolist()})"
        )
    x /= norms[:, None]
    names, labels = np.unique(raw_labels, return_inverse=True)
    if len(names) < 2:
        raise DataError(f"{path}: one class only; a taste needs at least two")
    if classes < 1.0:
        keep_n = max(2, round(classes * len(names)))
        keep = np.random.default_rng(10_000 + class_seed).choice(len(names), keep_n, replace=False)
        mask = np.isin(labels, keep)
        x, labels = x[mask], labels[mask]
        _, labels = np.unique(labels, return_inverse=True)
    return x, labels.astype(np.int64)


@dataclass(frozen=True)
class Person:
    """One simulated person: what they vote on, how, and what they truly like."""

    test: np.ndarray  # indices of the test pool
    stream: np.ndarray  # indices of the stream, in voting order
    votes: np.ndarray  # (len(stream),) int8 vote codes, 10% flipped
    test_true: np.ndarray  # (len(test),) true labels (0/1)
    test_votes: np.ndarray  # (len(test),) what the person would vote on the test pool (0/1)


def simulate_person(x: np.ndarray, labels: np.ndarray, u: int) -> Person:
    """The data README's protocol, steps 1-4, for person ``u``."""
    n_classes = int(labels.max()) + 1
    cent = np.stack([x[labels == c].mean(axis=0) for c in range(n_classes)]).astype(np.float64)
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    rng = np.random.default_rng(u)
    m = int(rng.integers(1, 4))
    centres = rng.choice(n_classes, size=min(m, n_classes), replace=False)
    closeness = (cent @ cent[centres].T).max(axis=1)
    n_liked = max(1, round(LIKED_FRACTION * n_classes))
    liked_classes = np.argsort(-closeness, kind="stable")[:n_liked]
    favourite = liked_classes[np.argmax(cent[liked_classes] @ cent[centres[0]])]
    liked = np.isin(labels, liked_classes)

    perm = rng.permutation(len(x))
    n_test = round(TEST_FRACTION * len(x))
    test, stream = perm[:n_test], perm[n_test:]
    flips = rng.random(len(stream)) < FLIP_PROBABILITY
    true_stream = liked[stream]
    voted_like = true_stream ^ flips
    votes = np.where(voted_like, LIKE, DISLIKE).astype(np.int8)
    votes[voted_like & (labels[stream] == favourite)] = SUPER_LIKE
    # Not part of the README protocol (drawn after it): the person's votes on the test
    # pool, with the same inconsistency, to measure calibration of the score shown.
    test_flips = rng.random(len(test)) < FLIP_PROBABILITY
    test_true = liked[test].astype(np.int8)
    return Person(test, stream, votes, test_true, (liked[test] ^ test_flips).astype(np.int8))


# ---- reference learners (scikit-learn and torch live only here, in bench/) ----


def _one_sided(votes: np.ndarray) -> bool:
    y = votes >= LIKE
    return bool(y.all() or not y.any())


def logistic_regression(
    xtr: np.ndarray, votes: np.ndarray, _u: np.ndarray, xte: np.ndarray
) -> np.ndarray | None:
    from sklearn.linear_model import LogisticRegression

    if _one_sided(votes):
        return None
    clf = LogisticRegression(C=10.0, class_weight="balanced", max_iter=2000)
    clf.fit(xtr, votes >= LIKE)
    out: np.ndarray = clf.decision_function(xte)
    return out


def knn(xtr: np.ndarray, votes: np.ndarray, _u: np.ndarray, xte: np.ndarray) -> np.ndarray | None:
    """k=7 nearest votes by cosine, softmax-weighted at temperature 0.1."""
    if _one_sided(votes):
        return None
    y = (votes >= LIKE).astype(np.float64)
    sims = xte @ xtr.T
    k = min(7, len(xtr))
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    s = np.take_along_axis(sims, top, axis=1) / 0.1
    w = np.exp(s - s.max(axis=1, keepdims=True))
    out: np.ndarray = (w * y[top]).sum(axis=1) / w.sum(axis=1)
    return out


def centroids(
    xtr: np.ndarray, votes: np.ndarray, _u: np.ndarray, xte: np.ndarray
) -> np.ndarray | None:
    """cos(x, liked centroid) - cos(x, disliked centroid)."""
    if _one_sided(votes):
        return None
    y = votes >= LIKE
    c_l = xtr[y].mean(axis=0)
    c_d = xtr[~y].mean(axis=0)
    out: np.ndarray = xte @ (c_l / np.linalg.norm(c_l)) - xte @ (c_d / np.linalg.norm(c_d))
    return out


def mlp(xtr: np.ndarray, votes: np.ndarray, _u: np.ndarray, xte: np.ndarray) -> np.ndarray | None:
    """MLP d-256-128-1, 10 epochs, Adam 1e-3, batch 32, binary cross-entropy."""
    import torch

    if _one_sided(votes):
        return None
    torch.manual_seed(0)
    d = xtr.shape[1]
    net = torch.nn.Sequential(
        torch.nn.Linear(d, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 1),
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xt = torch.from_numpy(np.ascontiguousarray(xtr, dtype=np.float32))
    yt = torch.from_numpy((votes >= LIKE).astype(np.float32))
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        for idx in torch.randperm(len(xt), generator=gen).split(32):
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xt[idx])[:, 0], yt[idx])
            loss.backward()
            opt.step()
    with torch.no_grad():
        out: np.ndarray = net(torch.from_numpy(np.ascontiguousarray(xte, dtype=np.float32)))[
            :, 0
        ].numpy()
    return out


REFERENCES: dict[str, Learner] = {
    "logistic regression": logistic_regression,
    "k-NN": knn,
    "centroids": centroids,
    "MLP": mlp,
}


# ---- the protocol ----


@dataclass
class Results:
    auc: dict[str, dict[int, list[float]]]
    ece_votes: dict[int, list[float]]  # project head vs the person's votes on the test pool
    ece_true: dict[int, list[float]]  # project head vs the true labels
    train_s: dict[int, list[float]]  # project head's training time


def unvoted_images(stream: np.ndarray, budget: int, per_vote: float | None) -> np.ndarray:
    """The stream images a person with ``budget`` votes has sent without voting on them.

    The protocol has the person vote on every image, in order: after B votes they have
    sent B images and no others (``per_vote`` 0). A person who votes on one image in
    1 + R sends R unvoted images per vote, the next round(R * B) of the stream
    (``per_vote`` R). None: every stream image not voted on, as if all had been sent."""
    if per_vote is None:
        return stream[budget:]
    return stream[budget : budget + round(per_vote * budget)]


def run(
    x: np.ndarray,
    labels: np.ndarray,
    users: int,
    references: bool = True,
    unvoted_per_vote: float | None = 0.0,
) -> Results:
    """Steps 5-6 of the protocol. A budget larger than a person's stream is skipped (its
    lists stay empty) rather than trained on fewer votes than it says. The project head
    is also given the images the person sent without voting (``unvoted_images``); the
    reference learners use votes only, as defined."""
    names = [PROJECT] + (list(REFERENCES) if references else [])
    res = Results(
        {n: {b: [] for b in BUDGETS} for n in names},
        {b: [] for b in BUDGETS},
        {b: [] for b in BUDGETS},
        {b: [] for b in BUDGETS},
    )
    for u in range(users):
        p = simulate_person(x, labels, u)
        xte = x[p.test]
        for b in BUDGETS:
            if b > len(p.stream):
                continue
            seen = p.stream[:b]
            xtr, votes = x[seen], p.votes[:b]
            unl = x[unvoted_images(p.stream, b, unvoted_per_vote)]
            t0 = time.perf_counter()
            head = train_head(xtr, votes, unlabeled=unl, seed=u)
            res.train_s[b].append(time.perf_counter() - t0)
            probs = head.predict(xte)
            auc = roc_auc(p.test_true, probs)
            res.auc[PROJECT][b].append(0.5 if auc is None else auc)
            res.ece_votes[b].append(expected_calibration_error(p.test_votes, probs))
            res.ece_true[b].append(expected_calibration_error(p.test_true, probs))
            if references:
                for name, fn in REFERENCES.items():
                    scores = fn(xtr, votes, unl, xte)
                    auc = None if scores is None else roc_auc(p.test_true, scores)
                    res.auc[name][b].append(0.5 if auc is None else auc)
    return res


Summary = dict[str, dict[str, float | None]]
NOT_LEARNERS = ("ece", "ece_true_labels", "train_s")  # the other keys of a summary


def _means(per_budget: dict[int, list[float]]) -> dict[str, float | None]:
    """Budget (as a string, JSON's keys) -> mean, or None where the budget was skipped."""
    return {str(b): float(np.mean(v)) if v else None for b, v in per_budget.items()}


def summary(res: Results) -> Summary:
    out = {name: _means(per) for name, per in res.auc.items()}
    out["ece"] = _means(res.ece_votes)
    out["ece_true_labels"] = _means(res.ece_true)
    out["train_s"] = _means(res.train_s)
    return out


def targets(s: Summary) -> list[str]:
    """Issue 3's targets, one line each, with pass/fail (empty without references)."""
    refs = [n for n in REFERENCES if n in s]
    if not refs:
        return []
    budgets = [b for b in TARGET_BUDGETS if s[PROJECT][str(b)] is not None]
    if len(budgets) < len(TARGET_BUDGETS):
        return [f"targets not checked: the stream is shorter than {TARGET_BUDGETS[-1]} votes"]

    def at(name: str, b: int) -> float:
        value = s[name][str(b)]
        assert value is not None
        return value

    lines = []
    for b in budgets:
        best = max(at(n, b) for n in refs)
        got = at(PROJECT, b)
        ok = got >= best - 0.005
        lines.append(
            f"budget {b}: {got:.3f} vs best ref {best:.3f} - 0.005  {'PASS' if ok else 'FAIL'}"
        )
    mean_p = np.mean([at(PROJECT, b) for b in budgets])
    mean_best = np.mean([max(at(n, b) for n in refs) for b in budgets])
    ok = mean_p >= mean_best + 0.02
    lines.append(
        f"mean 20-200: {mean_p:.3f} vs best ref {mean_best:.3f} + 0.02  {'PASS' if ok else 'FAIL'}"
    )
    ece = at("ece", 200)
    lines.append(f"ECE at 200: {ece:.3f} <= 0.05  {'PASS' if ece <= 0.05 else 'FAIL'}")
    return lines


def _row(label: str, values: dict[str, float | None], scale: float = 1.0, fmt: str = ".3f") -> str:
    cells = [values[str(b)] for b in BUDGETS]
    text = ["—" if v is None else format(scale * v, fmt) for v in cells]  # — : budget skipped
    return f"| {label} | " + " | ".join(text) + " |"


def table(s: Summary, title: str) -> str:
    """Markdown: AUC per learner and budget, the project head's ECE and training time."""
    head = f"| {title} | " + " | ".join(str(b) for b in BUDGETS) + " |"
    rows = [head, "|---" * (len(BUDGETS) + 1) + "|"]
    rows += [_row(name, s[name]) for name in [PROJECT, *REFERENCES] if name in s]
    rows.append(_row("project ECE (vs votes)", s["ece"]))
    rows.append(_row("project ECE (vs true labels)", s["ece_true_labels"]))
    rows.append(_row("project training time (ms)", s["train_s"], 1000.0, ".1f"))
    return "\n".join(rows)


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def plot(s: Summary, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    budgets = [b for b in BUDGETS if s[PROJECT][str(b)] is not None]
    for name in [PROJECT, *REFERENCES]:
        if name in s:
            ax.plot(
                budgets,
                [_or_nan(s[name][str(b)]) for b in budgets],
                marker="o",
                lw=2.5 if name == PROJECT else 1.2,
                label=name,
            )
    ax.set_xscale("log")
    ax.set_xticks(BUDGETS, [str(b) for b in BUDGETS])
    ax.set_xlabel("votes")
    ax.set_ylabel("mean ROC AUC (true labels)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cost(x: np.ndarray, labels: np.ndarray, reps: int = 4) -> dict[str, float]:
    """Seconds to train one person with 10,000 votes + 2,000 unvoted images, and to score."""
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(x), 12_000)
    # Jitter: resampled copies of one photo would be exact duplicates in the graph.
    pool = x[idx] + 0.02 * rng.standard_normal((len(idx), x.shape[1])).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    n_classes = int(labels.max()) + 1
    n_liked = max(1, round(LIKED_FRACTION * n_classes))
    liked = np.isin(labels[idx], rng.choice(n_classes, n_liked, replace=False))
    votes = np.where(liked ^ (rng.random(len(idx)) < FLIP_PROBABILITY), LIKE, DISLIKE)
    train = []
    for r in range(reps):
        started = time.perf_counter()
        head = train_head(pool[:10_000], votes[:10_000], unlabeled=pool[10_000:], seed=r)
        train.append(time.perf_counter() - started)
    queries = pool[10_000:]
    single = []
    for q in queries[:500]:
        started = time.perf_counter()
        head.predict(q[None, :])
        single.append(time.perf_counter() - started)
    started = time.perf_counter()
    head.predict(queries)
    batched = (time.perf_counter() - started) / len(queries)
    return {
        "train_s_median": float(np.median(train)),
        "train_s_max": float(np.max(train)),
        "predict_ms_median": 1000 * float(np.median(single)),
        "predict_ms_p99": 1000 * float(np.percentile(single, 99)),
        "predict_ms_batched": 1000 * batched,
    }


def _per_vote(text: str) -> float | None:
    if text == "all":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number >= 0 or 'all', not {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):  # also refuses nan
        raise argparse.ArgumentTypeError(f"a number >= 0 or 'all', not {text!r}")
    return value


def _whole(least: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isascii() or not text.isdigit() or int(text) < least:
            raise argparse.ArgumentTypeError(f"a whole number >= {least}, not {text!r}")
        return int(text)

    return parse


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m bench.learning", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--users", type=_whole(1), default=20)
    ap.add_argument("--json", action="store_true", help="print the summary as JSON only")
    ap.add_argument("--plot", type=Path, help="write a PNG of AUC vs votes")
    ap.add_argument("--classes", type=float, default=1.0, help="keep this fraction of the classes")
    ap.add_argument("--class-seed", type=_whole(0), default=0)
    ap.add_argument("--no-references", action="store_true", help="project learner only (faster)")
    ap.add_argument(
        "--unvoted",
        type=_per_vote,
        default=0.0,
        metavar="R|all",
        help="unvoted images each person sent per vote (default 0: they vote on every image "
        "they send, as in the protocol); 'all': every stream image not voted on",
    )
    ap.add_argument(
        "--cost", action="store_true", help="only time training (10,000 votes) and scoring"
    )
    args = ap.parse_args(argv)
    if args.plot and not args.plot.parent.is_dir():  # before the run, not after it
        ap.error(f"--plot: no directory {args.plot.parent}")
    if not (args.cost or args.no_references):
        try:
            import sklearn  # noqa: F401  (the logistic-regression reference)
        except ImportError:
            ap.error("the reference learners need scikit-learn: pip install -e '.[bench]'")
    try:
        x, labels = load(args.data, args.classes, args.class_seed)
    except DataError as e:
        ap.error(str(e))
    if args.cost:
        c = cost(x, labels)
        if args.json:
            json.dump(c, sys.stdout, indent=1)
            print()
            return
        print(
            f"train, 10,000 votes + 2,000 unvoted: median {c['train_s_median']:.2f} s, "
            f"max {c['train_s_max']:.2f} s; score one image: median "
            f"{c['predict_ms_median']:.3f} ms, p99 {c['predict_ms_p99']:.3f} ms; "
            f"in a batch {c['predict_ms_batched']:.4f} ms/image"
        )
        return
    res = run(x, labels, args.users, not args.no_references, args.unvoted)
    s = summary(res)
    title = args.data.stem + (
        f" ({args.classes:.0%} classes, seed {args.class_seed})" if args.classes < 1 else ""
    )
    if args.unvoted != 0:
        title += ", unvoted: " + ("all" if args.unvoted is None else f"{args.unvoted:g} per vote")
    if args.plot:
        plot(s, title, args.plot)
    if args.json:
        json.dump(s, sys.stdout, indent=1)
        print()
        return
    print(f"{title}: {len(x)} images, {labels.max() + 1} classes, {args.users} people")
    print(table(s, title))
    for line in targets(s):
        print(line)


if __name__ == "__main__":
    main()
