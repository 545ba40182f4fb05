"""What the services are asked and what they answer: people, incoming images, scores,
refusals and the outcomes of votes, retrains and admin actions. Platform adapters render
these; nothing here knows a chat platform, torch or SQL."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from domain.records import ModelVersion, Submission, Totals, User, UserCounts
from domain.votes import Vote


@dataclass(frozen=True)
class Person:
    """Who sent or tapped, as the platform identifies them."""

    platform: str
    platform_user_id: str
    display_name: str | None = None
    username: str | None = None  # without "@"; admins may name people by it


@dataclass(frozen=True)
class IncomingImage:
    person: Person
    chat_id: str
    message_id: str
    caption: str | None
    claimed_bytes: int | None  # the size the platform reports, checked before downloading


@dataclass(frozen=True)
class Scored:
    submission_id: int  # this message's submission
    score: float
    model_version: int | None  # None = cold start
    close_liked: int  # liked images at least `similar_threshold` similar
    closest_liked: float | None  # None when the person has liked nothing yet
    closest_disliked: float | None = None
    # Set when the person already voted on this image (same content, or a near-identical
    # embedding): the buttons then change that earlier vote instead of asking again.
    rated_before: Vote | None = None
    vote_target: int = 0  # the submission the vote buttons act on
    # The stored file of the image it matched (when rated before and images are retained),
    # shown with the score so the person sees which earlier vote the buttons change.
    matched_file: Path | None = None
    by_crowd: bool = False  # no head of the person's yet: the crowd model gave the score

    def __post_init__(self) -> None:
        if not self.vote_target:
            object.__setattr__(self, "vote_target", self.submission_id)


@dataclass(frozen=True)
class Refused:
    """An image that was not scored. The reason is a code (the decoder's RejectReason
    values, or 'rate_limited'); bot/render.py words it for the person."""

    reason: str
    detail: str = ""  # for the log, not the person
    limit: int | None = None  # the limit that was exceeded (bytes or pixels), where one was
    kind: str | None = None  # what the file's bytes say it is (e.g. "mp4", "psd"), if known


@dataclass(frozen=True)
class AlreadyAnswered:
    submission_id: int


ScoreOutcome = Scored | Refused | AlreadyAnswered


@dataclass(frozen=True)
class VoteOutcome:
    submission_id: int
    vote: Vote
    changed: bool


@dataclass(frozen=True)
class Undone:
    submission: Submission
    vote: Vote  # the vote removed
    own_buttons: bool  # the reply to that image holds only its buttons (not an album's rows)


@dataclass(frozen=True)
class RetrainOutcome:
    user: User
    version: int | None  # None when nothing was trained
    promoted: bool
    auc: float | None
    # The active head's AUC on the same held-out votes as the candidate (what the promotion
    # compared; not the AUC recorded when it was trained, on other votes). None when there
    # was no active head to compare, or nothing was trained.
    previous_auc: float | None
    train_size: int
    reason: str
    had_model: bool = False  # an active head (for the served encoder) existed before
    agreed: int | None = None  # held-out votes the new model put on the right side of 50%
    checked: int = 0  # held-out votes it was checked on

    @property
    def worth_announcing(self) -> bool:
        """A first model, or one that did better on the same held-out votes: a promotion that
        only ties ("not worse") is kept quietly."""
        if not self.promoted:
            return False
        if not self.had_model:
            return True
        return (
            self.auc is not None and self.previous_auc is not None and self.auc > self.previous_auc
        )


@dataclass(frozen=True)
class ModelList:
    versions: list[ModelVersion]  # oldest first
    removed: frozenset[int]  # versions whose file is gone (HEAD_FILES_KEPT): no rollback
    # Versions trained on another encoder's embeddings (before a promoted fine-tune): they
    # cannot score what the served encoder embeds, so no rollback either.
    other_encoder: frozenset[int]


class Rollback(Enum):
    DONE = "done"
    UNKNOWN_USER = "unknown user"
    NO_SUCH_VERSION = "no such version"
    FILE_REMOVED = "file removed"  # older than the HEAD_FILES_KEPT newest versions
    OTHER_ENCODER = "other encoder"  # trained before a promoted fine-tune of CLIP
    UNREADABLE = "file unreadable"  # truncated or corrupt: it would never score


@dataclass(frozen=True)
class LearningCurve:
    versions: list[ModelVersion]  # every trained head, oldest first
    votes: list[tuple[str, Vote]]  # (ISO time, vote), oldest first


@dataclass(frozen=True)
class Stats:
    counts: UserCounts
    active: ModelVersion | None
    totals: Totals | None  # admins only


@dataclass(frozen=True)
class BackboneOutcome:
    version: int | None  # None when nothing was trained
    promoted: bool
    reason: str
    new_auc: float | None = None
    old_auc: float | None = None
    people: int = 0  # people whose held-out votes decided
    examples: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class Export:
    """A person's own data, as the file they are sent."""

    images: int
    data: bytes  # UTF-8 JSON
    filename: str = "tastebot-export.json"


@dataclass(frozen=True)
class CrowdOutcome:
    version: int | None  # None when nothing was trained
    promoted: bool
    reason: str
    auc: float | None = None  # on held-out votes, averaged over people
    previous_auc: float | None = None  # the active crowd model's, on the same votes
    people: int = 0
