"""Callback data of the inline buttons, well under Telegram's 64 bytes:

v:<submission id>:<d|l|s>   vote dislike / like / super like
s:<submission id>           show the person's liked images closest to this one
m:<submission id>           "my score" for whoever taps (group chats)
f:<y|n>                     confirm or cancel /forget
"""

from __future__ import annotations

from domain import Vote

SIMILAR_PATTERN = r"^s:"
MY_SCORE_PATTERN = r"^m:"
FORGET_PATTERN = r"^f:"


def is_id(text: str) -> bool:
    return text.isascii() and text.isdigit()  # isdigit alone takes "²", which int() refuses


def encode_vote(submission_id: int, vote: Vote) -> str:
    return f"v:{submission_id}:{vote.letter}"


def decode_vote(data: str | None) -> tuple[int, Vote] | None:
    """(submission id, vote), or None for anything this bot did not make."""
    parts = (data or "").split(":")
    if len(parts) != 3 or parts[0] != "v" or not is_id(parts[1]):
        return None
    vote = Vote.from_letter(parts[2])
    return None if vote is None else (int(parts[1]), vote)


def encode_submission_action(action: str, submission_id: int) -> str:
    assert action in ("s", "m")
    return f"{action}:{submission_id}"


def decode_submission_action(data: str | None, action: str) -> int | None:
    parts = (data or "").split(":")
    if len(parts) != 2 or parts[0] != action or not is_id(parts[1]):
        return None
    return int(parts[1])


FORGET_YES = "f:y"
FORGET_NO = "f:n"
