"""Retrain people's heads: everyone due (the scheduler), or one person now (/retrain).

One head trains at a time (the shared training lock, also held by /forget, rollback and a
fine-tune's comparison), off the event loop. A candidate is recorded either way and
promoted only if its held-out votes say it is not worse than the active head.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bot.active_heads import ActiveHeads
from bot.crowd import SharedCrowd
from bot.notifications import Notifications
from bot.render import promotion_text
from bot.text_features import TextFeatures
from bot.vote_indexes import VoteIndexes
from domain import LabelledEmbedding, NewModel, RetrainOutcome, User
from learner.training import HeadTrainingResult, train_and_compare, trainable
from storage.files import DataDir
from storage.store import Store

log = logging.getLogger(__name__)


def vote_arrays(
    labelled: Sequence[LabelledEmbedding],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(submission ids, liked, weights): the votes as the learner reads them."""
    ids = np.array([v.submission_id for v in labelled], np.int64)
    liked = np.array([v.vote.liked for v in labelled], bool)
    weights = np.array([v.vote.weight for v in labelled], np.float64)
    return ids, liked, weights


def new_head_model(
    user_id: int,
    version: int,
    file_path: str,
    encoder_version: str,
    result: HeadTrainingResult,
    revision: int,
    parent_id: int | None = None,
) -> NewModel:
    """The model_versions row of a trained head."""
    return NewModel(
        owner_user_id=user_id,
        kind="head",
        version=version,
        parent_id=parent_id,
        file_path=file_path,
        encoder_version=encoder_version,
        train_size=result.train_size,
        holdout_size=result.candidate.size,
        # Whether (and how) the head uses the crowd model: /stats says so.
        metrics={
            **result.metrics(),
            "crowd_weight": result.head.info().get("crowd_weight"),
            "crowd_offset": result.head.info().get("crowd_offset"),
            "crowd_advice": float(bool(result.head.info().get("crowd_advice"))),
        },
        trained_through=revision,
    )


class RetrainService:
    def __init__(
        self,
        *,
        store: Store,
        data_dir: DataDir,
        heads: ActiveHeads,
        text: TextFeatures,
        indexes: VoteIndexes,
        crowd: SharedCrowd,
        notifications: Notifications,
        training_lock: asyncio.Lock,
        min_votes: int,
        min_new_votes: int,
        pause_seconds: float | None,
        hand_off: Callable[[int], Awaitable[object]] | None = None,
    ) -> None:
        self.store = store
        self.data_dir = data_dir
        self.heads = heads
        self.text = text
        # Flushed after every round: the scheduled round is when FAISS changes reach disk.
        self.indexes = indexes
        self.crowd = crowd  # each head starts from it, as far as the person's votes agree
        self.notifications = notifications
        self.training_lock = training_lock
        self.min_votes = min_votes
        self.min_new_votes = min_new_votes
        self.pause_seconds = pause_seconds  # None: no retrain after votes, the schedule only
        # A worker does not train: a person due after their pause is queued for a trainer.
        self.hand_off = hand_off
        self._due_at: dict[int, float] = {}  # person -> when their pause in voting ends
        self._soon: dict[int, asyncio.Task[None]] = {}  # one per person with votes pending
        self._training_now: set[int] = set()
        self._train_thread = ThreadPoolExecutor(1, thread_name_prefix="train")
        self._stopping = False
        self._rounds: set[asyncio.Task[Any]] = set()  # retrain rounds in progress

    async def retrain_person(
        self, platform: str, platform_user_id: str, trigger: str
    ) -> RetrainOutcome | None:
        """Retrain one person now (/retrain <user id>); like a round, tell them of a better model."""
        user = await self.store.people.find_user(platform, platform_user_id)
        if user is None:
            return None
        outcome = await self.retrain_user(user.id, trigger)
        await self.announce(outcome)
        return outcome

    async def announce(self, outcome: RetrainOutcome | None) -> None:
        if outcome is not None and outcome.worth_announcing:
            await self.notifications.send(outcome.user, promotion_text(outcome))

    def after_vote(self, user_id: int) -> None:
        """A person's votes changed: retrain them once they pause voting, in the background.
        One task per person; votes that arrive while it trains start another round after."""
        if self.pause_seconds is None or self._stopping:
            return
        loop = asyncio.get_running_loop()
        self._due_at[user_id] = loop.time() + self.pause_seconds
        running = self._soon.get(user_id)
        # A task that has left its loop but not yet finished would not see this vote.
        if running is None or running.done():
            task = loop.create_task(self._retrain_when_paused(user_id))
            self._soon[user_id] = task
            task.add_done_callback(lambda done: self._forget_task(user_id, done))

    def _forget_task(self, user_id: int, task: asyncio.Task[None]) -> None:
        if self._soon.get(user_id) is task:
            del self._soon[user_id]

    async def _retrain_when_paused(self, user_id: int) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping and user_id in self._due_at:
            wait = self._due_at[user_id] - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            del self._due_at[user_id]
            self._training_now.add(user_id)
            try:
                await self._after_pause(user_id)
            except Exception:  # the scheduled round retries; the vote itself is saved
                log.exception("retraining user %d after their votes failed", user_id)
            finally:
                self._training_now.discard(user_id)

    async def due_threshold(self, user_id: int) -> int:
        """New votes that make the person due: a first model as soon as the votes allow
        one; later, every RETRAIN_MIN_NEW_VOTES."""
        has_model = await self.store.models.active_model(user_id) is not None
        return self.min_new_votes if has_model else 1

    async def _after_pause(self, user_id: int) -> None:
        due = await self.due_threshold(user_id)
        if self.hand_off is None:
            await self.announce(await self.retrain_user(user_id, "votes", min_new_votes=due))
        elif await self.store.votes.new_votes(user_id) >= due:
            await self.hand_off(user_id)

    async def retrain_due_heads(
        self,
        min_new_votes: int,
        trigger: str,
        on_progress: Callable[[int, int], Awaitable[None]] | None = None,
    ) -> list[RetrainOutcome]:
        """Retrain everyone with ≥ min_new_votes new votes; tell each person whose model
        improved. `on_progress(done, total)` is awaited after each person."""
        task = asyncio.current_task()
        if task is not None:
            self._rounds.add(task)
        try:
            due = await self.store.votes.users_with_new_votes(min_new_votes)
            outcomes = []
            for done, (user_id, _) in enumerate(due, start=1):
                if self._stopping:  # the rest are retrained after the restart
                    break
                try:
                    # Still due? (The list above needs one new vote even with 0.)
                    outcome = await self.retrain_user(
                        user_id, trigger, min_new_votes=max(1, min_new_votes)
                    )
                except Exception as error:  # one person's failure must not stop the round
                    log.exception("retraining user %d failed; going on with the others", user_id)
                    outcome = await self._failed_outcome(user_id, error)
                # None: they sent /forget since the round began, or another round trained
                # them on these votes meanwhile (and reports on them).
                if outcome is not None:
                    outcomes.append(outcome)
                    await self.announce(outcome)
                if on_progress is not None:
                    await on_progress(done, len(due))
            return outcomes
        finally:
            self.indexes.flush()
            self._rounds.discard(task)

    async def _failed_outcome(self, user_id: int, error: Exception) -> RetrainOutcome | None:
        user = await self.store.people.get_user(user_id)
        if user is None:  # forgotten since: nobody to report on
            return None
        reason = f"training failed ({type(error).__name__}; see the log)"
        return RetrainOutcome(user, None, False, None, None, 0, reason)

    async def drain(self, timeout: float) -> None:
        """Before shutdown: start no more training, and give retrain rounds in progress up
        to `timeout` seconds to stop between two people."""
        self._stopping = True
        for user_id, task in list(self._soon.items()):
            if user_id not in self._training_now:
                task.cancel()  # still waiting for the person's pause: the schedule catches up
        rounds = [
            t for t in [*self._rounds, *self._soon.values()] if t is not asyncio.current_task()
        ]
        if rounds:
            _, pending = await asyncio.wait(rounds, timeout=timeout)
            if pending:
                log.warning("%d retrain round(s) still running at shutdown", len(pending))

    def close(self) -> None:
        self._train_thread.shutdown(wait=True, cancel_futures=True)

    async def retrain_user(
        self, user_id: int, trigger: str, *, min_new_votes: int = 0
    ) -> RetrainOutcome | None:
        """Train the person's head now; None if they are gone (a /forget since they were
        looked up: a round takes its list at the start, and forget waits for this lock) or,
        with ``min_new_votes``, if they no longer have that many new votes."""
        async with self.training_lock:
            # Checked at their turn, under the lock: a round that overlaps this one (a
            # scheduled tick during /retrain all) may have trained them on these votes.
            if min_new_votes > 0 and await self.store.votes.new_votes(user_id) < min_new_votes:
                return None
            return await self._retrain_user(user_id, trigger)

    # One function: the run row, the head file and the model row are made in order, and the
    # except clause must undo exactly what was made before the failure.
    async def _retrain_user(self, user_id: int, trigger: str) -> RetrainOutcome | None:
        user = await self.store.people.get_user(user_id)
        if user is None:
            return None
        encoder = self.heads.encoder_version
        revision = await self.store.votes.latest_revision(user_id)
        labelled = await self.store.votes.labelled_embeddings(user_id, encoder)
        submission_ids, liked, weights = vote_arrays(labelled)
        why_not = trainable(submission_ids, liked, self.min_votes)
        if why_not is not None:
            # Not a run: nothing is trained, and the scheduler would log one every tick.
            return RetrainOutcome(user, None, False, None, None, 0, why_not)

        await self.crowd.refresh()  # another trainer may have promoted one
        embeddings = await self.text.training_vectors(labelled)
        unlabelled = await self.text.unvoted_vectors(user_id, encoder)
        active, active_head = await self.heads.active_head(user_id)
        run_id = await self.store.runs.start_training_run(user_id, "head", trigger)
        head_path: Path | None = None
        try:
            result: HeadTrainingResult = await asyncio.get_running_loop().run_in_executor(
                self._train_thread,
                train_and_compare,
                submission_ids,
                embeddings,
                liked,
                weights,
                unlabelled,
                active_head,
                self.crowd.model,
            )
            version = await self.store.models.next_model_version(user_id)
            rel = self.data_dir.head_relpath(user_id, version)
            head_path = self.data_dir.path(rel)
            head_path.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(result.head.save, head_path)
            parent = None if active is None else active.id
            model = await self.store.models.add_model_version(
                new_head_model(user_id, version, rel, encoder, result, revision, parent),
                promote=result.promote,
            )
        except Exception as error:
            log.exception("training user %d failed", user_id)
            if head_path is not None:  # no row names it, so /forget would not delete it
                head_path.unlink(missing_ok=True)
            await self.store.runs.finish_training_run(
                run_id, outcome="failed", n_labels=len(liked), detail=repr(error)
            )
            raise
        if result.promote:  # a rejected candidate scores nothing: keep the active one
            self.heads.promoted(user_id, model.id, result.head)
        await self.heads.remove_old_files(user_id)
        outcome = "promoted" if result.promote else "rejected"
        await self.store.runs.finish_training_run(
            run_id,
            outcome=outcome,
            n_labels=len(liked),
            model_version_id=model.id,
            detail=result.reason,
        )
        log.info("user %d head v%d: %s (%s)", user_id, version, outcome, result.reason)
        return _outcome(user, version, result, had_model=active_head is not None)


def _outcome(
    user: User, version: int, result: HeadTrainingResult, *, had_model: bool
) -> RetrainOutcome:
    return RetrainOutcome(
        user,
        version,
        result.promote,
        result.candidate.auc,
        None if result.active is None else result.active.auc,
        result.train_size,
        result.reason,
        had_model,
        result.candidate.agreed,
        result.candidate.size,
    )
