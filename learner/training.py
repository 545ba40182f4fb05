"""Train a person's head, evaluate it on held-out votes, decide whether to promote it.

Pure: arrays in, a `HeadTrainingResult` out. The caller owns IO (SQLite, files).

Holdout. A vote is held out when a stable hash of its submission id says so,
not by a fresh random split per run: a vote held out once is held out forever,
so no model version ever trains on it, and every version can be compared with
the active one on votes neither has seen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from learner.crowd import CrowdModel
from learner.head import TasteHead, train_head
from learner.metrics import expected_calibration_error, roc_auc

HOLDOUT_EVERY = 5  # one vote in five (20 %) is held out


def is_holdout(submission_id: int) -> bool:
    # Knuth's multiplicative hash: consecutive ids spread evenly over residues.
    return (submission_id * 2654435761) % 2**32 % HOLDOUT_EVERY == 0


@dataclass(frozen=True)
class HoldoutMetrics:
    auc: float | None  # None when the held-out votes are all of one kind
    ece: float | None
    size: int
    agreed: int | None = None  # held-out votes on the side of 50% the score put them


@dataclass(frozen=True)
class HeadTrainingResult:
    head: TasteHead
    train_size: int
    candidate: HoldoutMetrics
    active: HoldoutMetrics | None  # the active head on the same held-out votes
    promote: bool
    reason: str
    seconds: float

    def metrics(self) -> dict[str, float | None]:
        return {
            "auc": self.candidate.auc,
            "ece": self.candidate.ece,
            "agreed": self.candidate.agreed,
            "active_auc": None if self.active is None else self.active.auc,
            "train_seconds": round(self.seconds, 4),
        }


def evaluate(head: TasteHead, embeddings: np.ndarray, liked: np.ndarray) -> HoldoutMetrics:
    """The head's AUC and ECE on held-out votes (``liked``: (n,) bool or 0/1)."""
    y = np.asarray(liked).astype(np.float64).ravel()
    if len(y) == 0:
        return HoldoutMetrics(None, None, 0)
    scores = head.predict(embeddings)
    agreed = int(((scores >= 0.5) == (y == 1)).sum())
    return HoldoutMetrics(roc_auc(y, scores), expected_calibration_error(y, scores), len(y), agreed)


def promotion_decision(
    candidate: HoldoutMetrics, active: HoldoutMetrics | None
) -> tuple[bool, str]:
    """Promote unless the held-out votes show the candidate is worse than the active head."""
    if active is None:
        return True, "first model"
    if candidate.auc is None or active.auc is None:
        if active.auc is not None:
            return False, "held-out votes are all of one kind, so the new model cannot be compared"
        return (
            True,
            "held-out votes cannot rank either model; promoted for being trained on more votes",
        )
    if candidate.auc >= active.auc:
        return True, f"holdout AUC {candidate.auc:.3f} ≥ active {active.auc:.3f}"
    return False, f"holdout AUC {candidate.auc:.3f} < active {active.auc:.3f}"


def train_and_compare(
    submission_ids: np.ndarray,
    embeddings: np.ndarray,
    liked: np.ndarray,
    weights: np.ndarray | None,
    unlabeled: np.ndarray | None,
    active_head: TasteHead | None,
    crowd: CrowdModel | None = None,
) -> HeadTrainingResult:
    """Train on the votes that are not held out; evaluate candidate and active head on the rest.

    ``liked`` (n,) bool or 0/1 and ``weights`` (n,) vote weights or None, as ``train_head``."""
    held = np.array([is_holdout(int(s)) for s in submission_ids], dtype=bool)
    y = np.asarray(liked).astype(bool).ravel()
    w = None if weights is None else np.asarray(weights, dtype=np.float64).ravel()[~held]
    started = time.perf_counter()
    head = train_head(embeddings[~held], y[~held], w, unlabeled=unlabeled, crowd=crowd)
    seconds = time.perf_counter() - started
    candidate = evaluate(head, embeddings[held], y[held])
    active = None if active_head is None else evaluate(active_head, embeddings[held], y[held])
    promote, reason = promotion_decision(candidate, active)
    return HeadTrainingResult(head, int((~held).sum()), candidate, active, promote, reason, seconds)


def trainable(submission_ids: np.ndarray, liked: np.ndarray, min_votes: int) -> str | None:
    """Why a head cannot be trained from these votes (``liked``, bool) yet, or None if it can."""
    y = np.asarray(liked).astype(bool).ravel()
    train_votes = y[[not is_holdout(int(s)) for s in submission_ids]]
    if len(y) < min_votes:
        return f"needs at least {min_votes} votes (has {len(y)})"
    if not (train_votes.any() and not train_votes.all()):
        return "needs at least one like and one dislike among its training votes"
    return None
