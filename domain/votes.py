"""The one definition of a vote: what it is stored as, how a button encodes it, what the
learner reads from it."""

from __future__ import annotations

from enum import StrEnum

SUPER_LIKE_WEIGHT = 2.0  # a super like is stronger evidence of taste than a like


class Vote(StrEnum):
    """Stored by value (the SQL column's CHECK lists the same three strings)."""

    DISLIKE = "dislike"
    LIKE = "like"
    SUPER_LIKE = "super_like"

    @property
    def liked(self) -> bool:
        """What the learner predicts: any like is a 1, a dislike a 0."""
        return self is not Vote.DISLIKE

    @property
    def weight(self) -> float:
        """How much the vote counts in training."""
        return SUPER_LIKE_WEIGHT if self is Vote.SUPER_LIKE else 1.0

    @property
    def letter(self) -> str:
        """One character, for button payloads that must stay short (Telegram: 64 bytes)."""
        return _LETTERS[self]

    @classmethod
    def from_letter(cls, letter: str) -> Vote | None:
        return _BY_LETTER.get(letter)


_LETTERS = {Vote.DISLIKE: "d", Vote.LIKE: "l", Vote.SUPER_LIKE: "s"}
_BY_LETTER = {letter: vote for vote, letter in _LETTERS.items()}
