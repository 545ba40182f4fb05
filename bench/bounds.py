"""How far above the reference learners a learner could get, for the kinds of taste whose
issue-22 targets are hardest to reach (graded and mixed), measured by learners that are told
what no real learner knows: the person's hidden taste.

    python -m bench.bounds [--data ../shared/data/clip-vit-b32/pets.npz] [--users 20]
        [--classes 0.5 --class-seed 1]

Same people, splits and votes as ``bench.learning`` (the data README's protocol, seeds 0..N-1):

- ``graded``: the AUC of the person's true style score z itself. Their labels are drawn with
  probability sigmoid(2z - 1.2), which rises with z, so ranking by z is the best any learner
  can do on average (a ceiling, whatever the votes).
- ``mixed``: logistic regression (C=1, balanced) on the person's true style score z and every
  image's class (one-hot), trained on their first B votes. It knows the taste's form (some
  classes, or much of one style) and learns only which classes and how much style: not a
  ceiling, a reference for what knowing the form is worth. C=1 was the best of 1, 10 and 100
  on caltech101 (mean over 20-200 votes; 10 and 100 were lower on every budget).

Prints JSON: ``{"graded_ceiling": auc, "mixed_oracle": {"<budget>": auc}}``, means over people.
Compare them with ``bench.learning``'s best reference for the same file and seeds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.learning import (
    DEFAULT_DATA,
    MIXED_FRACTION,
    STYLE_RANK,
    TARGET_BUDGETS,
    World,
    load,
    simulate_person,
)
from learner.metrics import roc_auc

ORACLE_C = 1.0


def graded_truth(world: World, u: int) -> tuple[np.ndarray, np.ndarray]:
    """(z, labels) of graded person u: their style score and the labels drawn from it, with
    ``bench.learning.taste``'s draws."""
    rng = np.random.default_rng(u)
    z = world.style_score(rng.standard_normal(STYLE_RANK))
    p = 1.0 / (1.0 + np.exp(-(2.0 * z - 1.2)))
    return z, rng.random(len(z)) < p


def mixed_truth(world: World, u: int) -> tuple[np.ndarray, np.ndarray]:
    """(liked classes, z) of mixed person u, with ``bench.learning.taste``'s draws."""
    rng = np.random.default_rng(u)
    classes, _ = world.interest_classes(rng, MIXED_FRACTION)
    return classes, world.style_score(rng.standard_normal(STYLE_RANK))


def bounds(world: World, users: int) -> dict[str, object]:
    """The graded ceiling and the mixed oracle's AUC per budget, means over people 0..users-1."""
    from sklearn.linear_model import LogisticRegression

    ceiling: list[float] = []
    oracle: dict[int, list[float]] = {b: [] for b in TARGET_BUDGETS}
    one_hot = np.eye(world.n_classes)[world.labels]
    for u in range(users):
        z, _ = graded_truth(world, u)
        person = simulate_person(world, u, "graded")
        auc = roc_auc(person.test_true, z[person.test])
        ceiling.append(0.5 if auc is None else auc)
        _, z = mixed_truth(world, u)
        person = simulate_person(world, u, "mixed")
        features = np.hstack([z[:, None], one_hot])
        for b in TARGET_BUDGETS:
            seen, liked = person.stream[:b], person.liked[:b]
            if liked.all() or not liked.any():
                oracle[b].append(0.5)  # as bench.learning scores a constant
                continue
            clf = LogisticRegression(C=ORACLE_C, class_weight="balanced", max_iter=2000)
            clf.fit(features[seen], liked)
            auc = roc_auc(person.test_true, clf.decision_function(features[person.test]))
            oracle[b].append(0.5 if auc is None else auc)
    return {
        "graded_ceiling": float(np.mean(ceiling)),
        "mixed_oracle": {str(b): float(np.mean(v)) for b, v in oracle.items()},
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.bounds", description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--classes", type=float, default=1.0)
    ap.add_argument("--class-seed", type=int, default=0)
    args = ap.parse_args(argv)
    x, labels = load(args.data, args.classes, args.class_seed)
    print(json.dumps(bounds(World(x, labels), args.users), indent=1))


if __name__ == "__main__":
    main()
