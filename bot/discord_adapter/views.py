"""The vote buttons: persistent across restarts because their state lives in the custom_id.

`VoteButton` is a `discord.ui.DynamicItem`: registered once with
`client.add_dynamic_items`, it answers any button whose custom_id matches its
template, on any message, sent by any earlier run of the bot.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord

from bot import render
from domain import Vote

if TYPE_CHECKING:
    from bot.discord_adapter.app import TasteClient


def encode_vote(submission_id: int, vote: Vote) -> str:
    """`tastebot:v:<submission id>:<d|l|s>`, well under Discord's 100 characters."""
    return f"tastebot:v:{submission_id}:{vote.letter}"


class VoteButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"tastebot:v:(?P<submission>[0-9]{1,18}):(?P<vote>[dls])",
):
    def __init__(self, submission_id: int, vote: Vote, *, chosen: bool = False) -> None:
        super().__init__(
            discord.ui.Button(
                label=("✓ " if chosen else "") + render.VOTE_LABELS[vote],
                style=discord.ButtonStyle.primary if chosen else discord.ButtonStyle.secondary,
                custom_id=encode_vote(submission_id, vote),
            )
        )
        self.submission_id = submission_id
        self.vote = vote

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> VoteButton:
        vote = Vote.from_letter(match["vote"])
        assert vote is not None, "the template admits only d, l and s"
        return cls(int(match["submission"]), vote)

    async def callback(self, interaction: discord.Interaction[TasteClient]) -> None:  # type: ignore[override]
        await interaction.client.on_vote_button(interaction, self.submission_id, self.vote)


class MyScoreButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"tastebot:m:(?P<submission>[0-9]{1,18})",
):
    """🔒 My score, in server channels: the presser's own score, shown to them alone."""

    def __init__(self, submission_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label=render.MY_SCORE_LABEL,
                style=discord.ButtonStyle.success,
                custom_id=f"tastebot:m:{submission_id}",
            )
        )
        self.submission_id = submission_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> MyScoreButton:
        return cls(int(match["submission"]))

    async def callback(self, interaction: discord.Interaction[TasteClient]) -> None:  # type: ignore[override]
        await interaction.client.on_my_score_button(interaction, self.submission_id)


def vote_view(
    submission_id: int, chosen: Vote | None = None, *, shared: bool = False
) -> discord.ui.View:
    """The vote buttons; in a shared channel (``shared``) without a choice shown (they are
    everyone's) and with 🔒 My score, as in Telegram groups."""
    view = discord.ui.View(timeout=None)  # persistent: the buttons never expire
    for vote in render.VOTE_ORDER:
        view.add_item(VoteButton(submission_id, vote, chosen=vote is chosen and not shared))
    if shared:
        view.add_item(MyScoreButton(submission_id))
    return view
