"""What the store keeps and returns: plain nouns, no behaviour beyond derived values."""

from __future__ import annotations

from dataclasses import dataclass, field

from domain.votes import Vote


@dataclass(frozen=True)
class User:
    id: int
    platform: str
    platform_user_id: str


@dataclass(frozen=True)
class Submission:
    id: int
    user_id: int
    image_id: int
    chat_id: str
    message_id: str
    score: float
    model_version_id: int | None
    reply_message_id: str | None


@dataclass(frozen=True)
class VoteChange:
    """What an upsert did: `changed` is False for a repeated tap or a redelivered update."""

    submission: Submission
    vote: Vote
    previous: Vote | None
    changed: bool


@dataclass(frozen=True)
class LabelledEmbedding:
    submission_id: int
    image_id: int
    vote: Vote
    vector: bytes


@dataclass(frozen=True)
class ModelVersion:
    id: int
    owner_user_id: int | None
    kind: str
    version: int
    file_path: str
    encoder_version: str
    train_size: int
    holdout_size: int
    trained_through: int
    status: str
    created_at: str
    metrics: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class NewModel:
    """A trained model about to be recorded in model_versions."""

    owner_user_id: int | None  # None = global (a backbone)
    kind: str  # 'head' or 'backbone'
    version: int
    file_path: str
    encoder_version: str
    train_size: int
    holdout_size: int
    metrics: dict[str, float | None]
    trained_through: int  # feedback.revision it has seen up to
    parent_id: int | None = None


@dataclass(frozen=True)
class UserCounts:
    images: int  # submissions: an image sent twice counts twice, as in /export and /forget
    likes: int
    super_likes: int
    dislikes: int

    @property
    def votes(self) -> int:
        return self.likes + self.super_likes + self.dislikes


@dataclass(frozen=True)
class Totals:
    users: int
    images: int
    submissions: int
    votes: int
    active_models: int


@dataclass(frozen=True)
class ForgetReport:
    submissions: int
    votes: int
    models: int
    images: int  # image rows deleted (content nobody else sent)
    files: list[str]  # paths relative to DATA_DIR, for the caller to delete
    # (user_id, image_id) of other people's votes on this person's submissions (in a group),
    # deleted with them: the caller brings those people's FAISS indexes in step
    others_votes: list[tuple[int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class UserSummary:
    platform: str
    platform_user_id: str
    votes: int
    active_version: int | None
    active_auc: float | None


@dataclass(frozen=True)
class RetainedVote:
    user_id: int
    submission_id: int
    vote: Vote
    file_path: str  # relative to DATA_DIR
