"""How far above the reference learners a learner could get, for the kinds of taste whose
issue-22 targets are hardest to reach (graded and mixed), measured by learners that are told
what no real learner knows: the person's hidden taste.

    python -m bench.bounds [--data ../shared/data/clip-vit-b32/pets.npz] [--users 20]
        [--classes 0.5 --class-seed 1]

Same people, splits and votes as ``bench.learning`` (the data README's protocol, seeds 0..N-1):

- ``graded``: the AUC of the person's true style score z itself. Their labels are drawn with
  probability sigmoid(2z - 1.2), which rises with z, so ranking by z is the best any learner
  can do on average (a ceiling, whatever the votes).
- ``graded``, a learner told where tastes lie: logistic regression (balanced; C = 0.1, 1 and
  10, all reported: choosing among them by the test is part of the oracle) on the coordinates
  of the 20 principal directions the style directions are drawn from, scaled as they are drawn
  (the data README's s_k v_k). It still has to learn the person's direction from their votes:
  about the best a learner with a perfect prior of where tastes lie can do.
- ``graded``, calibration: the ECE (as bench.learning's: 10 bins, against the person's votes on
  the test pool) of the true probabilities sigmoid(2z - 1.2) (what no learner can beat but by
  chance), and of a learner told z that calibrates it on the person's first B votes (logistic
  regression of those votes on z, unpenalised, unbalanced): the ECE a perfect ranking reaches
  when its probabilities come from B votes, as the head's do.
- ``mixed``: logistic regression (C=1, balanced) on the person's true style score z and every
  image's class (one-hot), trained on their first B votes. It knows the taste's form (some
  classes, or much of one style) and learns only which classes and how much style: not a
  ceiling, a reference for what knowing the form is worth. C=1 was the best of 1, 10 and 100
  on caltech101 (mean over 20-200 votes; 10 and 100 were lower on every budget).

Prints JSON: ``{"graded_ceiling": auc, "graded_subspace": {"<C>": {"<budget>": auc}},
"graded_truth_ece": ece, "graded_told_ece": {"<budget>": ece}, "mixed_oracle": {"<budget>":
auc}}``, means over people.
Compare them with ``bench.learning``'s best reference for the same file and seeds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from bench.learning import (
    DEFAULT_DATA,
    TARGET_BUDGETS,
    Person,
    World,
    graded_probability,
    graded_truth,
    load,
    mixed_truth,
    simulate_person,
)
from learner.metrics import expected_calibration_error, roc_auc

ORACLE_C = 1.0
UNPENALISED_C = 1e6  # the told learner's calibration: two parameters, hundreds of votes
SUBSPACE_CS = (0.1, 1.0, 10.0)


def bounds(world: World, users: int) -> dict[str, Any]:
    """The graded ceiling, the graded subspace learner's and the mixed oracle's AUC per budget,
    and the graded truth's and told learner's ECE, means over people 0..users-1."""
    ceiling: list[float] = []
    truth_ece: list[float] = []
    told_ece: dict[int, list[float]] = {b: [] for b in TARGET_BUDGETS}
    oracle: dict[int, list[float]] = {b: [] for b in TARGET_BUDGETS}
    subspace: dict[float, dict[int, list[float]]] = {
        c: {b: [] for b in TARGET_BUDGETS} for c in SUBSPACE_CS
    }
    one_hot = np.eye(world.n_classes)[world.labels]
    basis = world.centred_basis / world.centred_basis.std()  # one scale: the s_k stay
    for u in range(users):
        z, _ = graded_truth(world, np.random.default_rng(u))  # the draws of person u's taste
        person = simulate_person(world, u, "graded")
        auc = roc_auc(person.test_true, z[person.test])
        ceiling.append(0.5 if auc is None else auc)
        truth = graded_probability(z[person.test])
        truth_ece.append(expected_calibration_error(person.test_votes, truth))
        for b, ece in _told_eces(z, person).items():
            told_ece[b].append(ece)
        for c in SUBSPACE_CS:
            for b, auc in _logistic_aucs(basis, person, c).items():
                subspace[c][b].append(auc)
        _, _, z = mixed_truth(world, np.random.default_rng(u))
        person = simulate_person(world, u, "mixed")
        features = np.hstack([z[:, None], one_hot])
        for b, auc in _logistic_aucs(features, person, ORACLE_C).items():
            oracle[b].append(auc)
    return {
        "graded_ceiling": float(np.mean(ceiling)),
        "graded_subspace": {str(c): _means(v) for c, v in subspace.items()},
        "graded_truth_ece": float(np.mean(truth_ece)),
        "graded_told_ece": _means(told_ece),
        "mixed_oracle": _means(oracle),
    }


def _means(per_budget: dict[int, list[float]]) -> dict[str, float]:
    return {str(b): float(np.mean(v)) for b, v in per_budget.items()}


def _told_eces(z: np.ndarray, person: Person) -> dict[int, float]:
    """Budget -> ECE on the person's test pool of their true score z calibrated on their first
    ``budget`` votes (logistic regression on z alone); a constant where those are one side."""
    from sklearn.linear_model import LogisticRegression

    out = {}
    for b in TARGET_BUDGETS:
        seen, liked = person.stream[:b], person.liked[:b]
        if liked.all() or not liked.any():
            probs = np.full(len(person.test), float(liked.mean()))
        else:
            clf = LogisticRegression(C=UNPENALISED_C, max_iter=2000)
            clf.fit(z[seen, None], liked)
            probs = clf.predict_proba(z[person.test, None])[:, 1]
        out[b] = expected_calibration_error(person.test_votes, probs)
    return out


def _logistic_aucs(features: np.ndarray, person: Person, c: float) -> dict[int, float]:
    """Budget -> AUC on the person's test pool of balanced logistic regression (C=c) on
    ``features`` of their first ``budget`` votes; 0.5 where those are all one side, as
    bench.learning scores a learner that can only output a constant."""
    from sklearn.linear_model import LogisticRegression

    out = {}
    for b in TARGET_BUDGETS:
        seen, liked = person.stream[:b], person.liked[:b]
        if liked.all() or not liked.any():
            out[b] = 0.5
            continue
        clf = LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
        clf.fit(features[seen], liked)
        auc = roc_auc(person.test_true, clf.decision_function(features[person.test]))
        out[b] = 0.5 if auc is None else auc
    return out


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
