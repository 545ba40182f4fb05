"""Callback data for the vote buttons: `v:<submission id>:<d|l|s>`, well under Telegram's 64 bytes."""

from __future__ import annotations

from storage.records import Vote

_CODES = {Vote.DISLIKE: "d", Vote.LIKE: "l", Vote.SUPER_LIKE: "s"}
_VOTES = {code: vote for vote, code in _CODES.items()}


def encode_vote(submission_id: int, vote: Vote) -> str:
    return f"v:{submission_id}:{_CODES[vote]}"


def decode_vote(data: str | None) -> tuple[int, Vote] | None:
    """(submission id, vote), or None for anything this bot did not make."""
    if not data:
        return None
    parts = data.split(":")
    if len(parts) != 3 or parts[0] != "v" or parts[2] not in _VOTES or not parts[1].isdigit():
        return None
    return int(parts[1]), _VOTES[parts[2]]
