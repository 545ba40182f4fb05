"""Learning curves of the project's taste head against reference learners.

Runs the simulated-user protocol of ``../shared/data/README.md`` on any npz with
``embeddings`` (N, d) and ``labels`` (N,):

    python -m bench.learning --data ../shared/data/clip-vit-b32/pets.npz [--users 20]
        [--json] [--plot out.png] [--classes 0.5 --class-seed 1] [--cost]

The project learner is ``learner.head.train_head`` itself (the code the bot runs).
``--classes F`` keeps a random fraction F of the classes: a held-out world to check
that the design is not tuned to the three files. ``--cost`` only times the head: training
one person with 10,000 votes and 2,000 unvoted images (the file's images resampled with a
little jitter), and scoring one image.
"""

from __future__ import annotations

import argparse
import json
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


def load(path: Path, classes: float = 1.0, class_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings as float32 re-normalised, labels as 0..C-1; optionally a subset of classes."""
    with np.load(path, allow_pickle=False) as z:
        x = z["embeddings"].astype(np.float32)
        labels = z["labels"].astype(np.int64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    if classes < 1.0:
        names = np.unique(labels)
        keep_n = max(2, round(classes * len(names)))
        keep = np.random.default_rng(10_000 + class_seed).choice(names, keep_n, replace=False)
        mask = np.isin(labels, keep)
        x, labels = x[mask], labels[mask]
    _, labels = np.unique(labels, return_inverse=True)
    return x, labels


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
    train_s: list[float]


def run(x: np.ndarray, labels: np.ndarray, users: int, references: bool = True) -> Results:
    names = [PROJECT] + (list(REFERENCES) if references else [])
    res = Results(
        {n: {b: [] for b in BUDGETS} for n in names},
        {b: [] for b in BUDGETS},
        {b: [] for b in BUDGETS},
        [],
    )
    for u in range(users):
        p = simulate_person(x, labels, u)
        xte = x[p.test]
        for b in BUDGETS:
            seen = p.stream[:b]
            xtr, votes, unl = x[seen], p.votes[:b], x[p.stream[b:]]
            t0 = time.perf_counter()
            head = train_head(xtr, votes, unlabeled=unl, seed=u)
            res.train_s.append(time.perf_counter() - t0)
            probs = head.predict(xte)
            res.auc[PROJECT][b].append(roc_auc(p.test_true, probs) or 0.5)
            res.ece_votes[b].append(expected_calibration_error(p.test_votes, probs))
            res.ece_true[b].append(expected_calibration_error(p.test_true, probs))
            if references:
                for name, fn in REFERENCES.items():
                    scores = fn(xtr, votes, unl, xte)
                    auc = None if scores is None else roc_auc(p.test_true, scores)
                    res.auc[name][b].append(0.5 if auc is None else auc)
    return res


def summary(res: Results) -> dict[str, dict[str, float]]:
    out = {n: {str(b): float(np.mean(v)) for b, v in per.items()} for n, per in res.auc.items()}
    out["ece"] = {str(b): float(np.mean(v)) for b, v in res.ece_votes.items()}
    out["ece_true_labels"] = {str(b): float(np.mean(v)) for b, v in res.ece_true.items()}
    out["train_s_mean"] = {"all": float(np.mean(res.train_s))}
    return out


def targets(s: dict[str, dict[str, float]]) -> list[str]:
    """Issue 3's targets, one line each, with pass/fail."""
    refs = [n for n in REFERENCES if n in s]
    if not refs:
        return []
    lines = []
    for b in TARGET_BUDGETS:
        best = max(s[n][str(b)] for n in refs)
        got = s[PROJECT][str(b)]
        ok = got >= best - 0.005
        lines.append(
            f"budget {b}: {got:.3f} vs best ref {best:.3f} - 0.005  {'PASS' if ok else 'FAIL'}"
        )
    mean_p = np.mean([s[PROJECT][str(b)] for b in TARGET_BUDGETS])
    mean_best = np.mean([max(s[n][str(b)] for n in refs) for b in TARGET_BUDGETS])
    ok = mean_p >= mean_best + 0.02
    lines.append(
        f"mean 20-200: {mean_p:.3f} vs best ref {mean_best:.3f} + 0.02  {'PASS' if ok else 'FAIL'}"
    )
    ece = s["ece"]["200"]
    lines.append(f"ECE at 200: {ece:.3f} <= 0.05  {'PASS' if ece <= 0.05 else 'FAIL'}")
    return lines


def table(s: dict[str, dict[str, float]], title: str) -> str:
    head = f"| {title} | " + " | ".join(str(b) for b in BUDGETS) + " |"
    rows = [head, "|---" * (len(BUDGETS) + 1) + "|"]
    for name in [PROJECT, *REFERENCES]:
        if name in s:
            rows.append(
                f"| {name} | " + " | ".join(f"{s[name][str(b)]:.3f}" for b in BUDGETS) + " |"
            )
    rows.append(
        "| project ECE (vs votes) | "
        + " | ".join(f"{s['ece'][str(b)]:.3f}" for b in BUDGETS)
        + " |"
    )
    rows.append(
        "| project ECE (vs true labels) | "
        + " | ".join(f"{s['ece_true_labels'][str(b)]:.3f}" for b in BUDGETS)
        + " |"
    )
    return "\n".join(rows)


def plot(s: dict[str, dict[str, float]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in [PROJECT, *REFERENCES]:
        if name in s:
            ax.plot(
                BUDGETS,
                [s[name][str(b)] for b in BUDGETS],
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
    liked = np.isin(labels[idx], rng.choice(int(labels.max()) + 1, 10, replace=False))
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--json", action="store_true", help="print the summary as JSON only")
    ap.add_argument("--plot", type=Path, help="write a PNG of AUC vs votes")
    ap.add_argument("--classes", type=float, default=1.0, help="keep this fraction of the classes")
    ap.add_argument("--class-seed", type=int, default=0)
    ap.add_argument("--no-references", action="store_true", help="project learner only (faster)")
    ap.add_argument(
        "--cost", action="store_true", help="only time training (10,000 votes) and scoring"
    )
    args = ap.parse_args(argv)

    x, labels = load(args.data, args.classes, args.class_seed)
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
    res = run(x, labels, args.users, references=not args.no_references)
    s = summary(res)
    title = args.data.stem + (
        f" ({args.classes:.0%} classes, seed {args.class_seed})" if args.classes < 1 else ""
    )
    if args.plot:
        plot(s, title, args.plot)
    if args.json:
        json.dump(s, sys.stdout, indent=1)
        print()
        return
    print(f"{title}: {len(x)} images, {labels.max() + 1} classes, {args.users} people")
    print(table(s, title))
    print(f"project head mean training time: {1000 * s['train_s_mean']['all']:.1f} ms")
    for line in targets(s):
        print(line)


if __name__ == "__main__":
    main()
