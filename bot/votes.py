"""Votes: record a tap (before the platform acknowledges it) and take the last one back."""

from __future__ import annotations

from collections.abc import Callable

from bot.vote_indexes import VoteIndexes
from domain import Person, Undone, Vote, VoteOutcome
from storage.store import Store


class VoteService:
    def __init__(
        self, store: Store, indexes: VoteIndexes, on_change: Callable[[int], None] | None = None
    ) -> None:
        self.store = store
        self.indexes = indexes
        self.on_change = on_change  # told the person's user id after a vote that changed

    async def record_vote(
        self, person: Person, submission_id: int, vote: Vote
    ) -> VoteOutcome | None:
        """Commit the vote and keep FAISS in step; None if the submission is unknown."""
        user = await self.store.people.user_of(person)
        change = await self.store.votes.upsert_vote(user.id, submission_id, vote)
        if change is None:
            return None
        if change.changed:
            await self.indexes.reindex_image(user.id, change.submission.image_id)
            if self.on_change is not None:
                self.on_change(user.id)
        return VoteOutcome(submission_id, vote, change.changed)

    async def undo_last_vote(self, person: Person) -> Undone | None:
        """Remove the person's most recent vote; the image goes back to unrated."""
        user = await self.store.people.user_of(person)
        last = await self.store.votes.last_vote(user.id)
        if last is None:
            return None
        submission, vote = last
        await self.store.votes.delete_vote(user.id, submission.id)
        await self.indexes.reindex_image(user.id, submission.image_id)
        reply = submission.reply_message_id
        own = reply is not None and (
            await self.store.submissions.count_answered_by(
                submission.user_id, submission.chat_id, reply
            )
            == 1
        )
        return Undone(submission, vote, own_buttons=own)
