"""Inline keyboards: what the buttons look like and what they say back."""

from __future__ import annotations

from collections.abc import Sequence

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from bot import render
from bot.telegram_adapter.callback_data import (
    FORGET_NO,
    FORGET_YES,
    decode_vote,
    encode_submission_action,
    encode_vote,
)
from domain import Vote

CHECK = "✓ "


def _vote_row(
    submission_id: int, chosen: Vote | None, prefix: str = ""
) -> list[InlineKeyboardButton]:
    labels = render.VOTE_LABELS if not prefix else render.VOTE_EMOJI
    return [
        InlineKeyboardButton(
            (CHECK if vote is chosen else "") + prefix + labels[vote],
            callback_data=encode_vote(submission_id, vote),
        )
        for vote in render.VOTE_ORDER
    ]


def score_keyboard(
    submission_id: int, *, group: bool = False, chosen: Vote | None = None
) -> InlineKeyboardMarkup:
    """Vote buttons, plus "show similar" in a private chat or "my score" in a group."""
    extra = (
        InlineKeyboardButton(
            render.MY_SCORE_LABEL, callback_data=encode_submission_action("m", submission_id)
        )
        if group
        else InlineKeyboardButton(
            "🔍 Show similar", callback_data=encode_submission_action("s", submission_id)
        )
    )
    return InlineKeyboardMarkup([_vote_row(submission_id, None if group else chosen), [extra]])


def album_keyboard(rows: Sequence[tuple[int, Vote | None]]) -> InlineKeyboardMarkup:
    """One row of vote buttons per image, numbered as in the ranked text."""
    return InlineKeyboardMarkup(
        [_vote_row(sid, chosen, prefix=f"{rank}. ") for rank, (sid, chosen) in enumerate(rows, 1)]
    )


def mark_choice(
    markup: InlineKeyboardMarkup, submission_id: int, vote: Vote | None
) -> InlineKeyboardMarkup:
    """The same keyboard with `vote` ticked on `submission_id`'s buttons (None: no tick)."""
    rows = []
    for row in markup.inline_keyboard:
        new_row = []
        for button in row:
            parsed = decode_vote(
                button.callback_data if isinstance(button.callback_data, str) else None
            )
            if parsed is not None and parsed[0] == submission_id:
                text = button.text.removeprefix(CHECK)
                button = InlineKeyboardButton(
                    (CHECK if parsed[1] is vote else "") + text, callback_data=button.callback_data
                )
            new_row.append(button)
        rows.append(new_row)
    return InlineKeyboardMarkup(rows)


def forget_keyboard() -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton("🗑 Yes, delete everything", callback_data=FORGET_YES),
                InlineKeyboardButton("Cancel", callback_data=FORGET_NO),
            ]
        ]
    )
