"""The crowd model: everyone's votes (every platform) as one shared taste.

It scores a newcomer before their first vote, and every person's head starts from it as far
as their own votes say it fits them (learner.head chooses that strength). It holds aggregate
parameters only: one direction in CLIP space and two calibration numbers, no one's images,
embeddings or votes. It is trained like a head: on the votes that are not held out, and
promoted only if it ranks the held-out votes, averaged over people, no worse than the active
one. A person who sends /forget leaves it at its next training.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zipfile

import numpy as np

from bot.text_features import TextFeatures
from domain import CrowdOutcome, NewModel
from learner.crowd import CrowdModel, evaluate_crowd, promote_crowd, train_crowd
from learner.training import is_holdout
from storage.files import DataDir
from storage.store import Store

log = logging.getLogger(__name__)

KIND = "crowd"


class SharedCrowd:
    """The active crowd model for the served encoder (None until one is trained), shared by
    scoring and head training."""

    def __init__(
        self,
        store: Store,
        data_dir: DataDir,
        encoder_version: str,
        *,
        refresh_seconds: float = 0.0,
    ) -> None:
        self.store = store
        self.data_dir = data_dir
        self.encoder_version = encoder_version
        self.model: CrowdModel | None = None
        self.model_id: int | None = None  # its model_versions row
        # Another process (a trainer) may promote one: checked at most this often.
        self.refresh_seconds = refresh_seconds
        self._checked_at = -math.inf

    async def load(self) -> None:
        """Read the active crowd model, if it was trained on the served encoder's vectors."""
        self.model, self.model_id = None, None
        self._checked_at = time.monotonic()
        active = await self.store.models.active_global(KIND)
        if active is None or active.encoder_version != self.encoder_version:
            return
        path = self.data_dir.path(active.file_path)
        try:
            self.model = await asyncio.to_thread(CrowdModel.load, path)
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile):
            log.exception("cannot read the crowd model %s; scoring without it", path)
            return
        self.model_id = active.id

    async def refresh(self) -> bool:
        """Load the active crowd model if it is not the one held (another process promoted
        it); at most one query every ``refresh_seconds``. True if it changed."""
        if time.monotonic() - self._checked_at < self.refresh_seconds:
            return False
        self._checked_at = time.monotonic()
        active = await self.store.models.active_global(KIND)
        fits = active is not None and active.encoder_version == self.encoder_version
        if (active.id if active is not None and fits else None) == self.model_id:
            return False
        await self.load()
        log.info("crowd model changed to model %s", self.model_id)
        return True

    def promoted(self, model_id: int, model: CrowdModel) -> None:
        self.model, self.model_id = model, model_id

    async def switch(self, encoder_version: str) -> None:
        """Another encoder: a crowd model of the old one's vectors cannot score the new."""
        self.encoder_version = encoder_version
        await self.load()


class CrowdTraining:
    def __init__(
        self,
        *,
        store: Store,
        data_dir: DataDir,
        text: TextFeatures,
        crowd: SharedCrowd,
        min_people: int,
        min_votes: int,
        min_new_votes: int,
    ) -> None:
        self.store = store
        self.data_dir = data_dir
        self.text = text
        self.crowd = crowd
        self.min_people = min_people
        self.min_votes = min_votes
        self.min_new_votes = min_new_votes
        self._lock = asyncio.Lock()  # one crowd training at a time

    async def why_not_due(self) -> str | None:
        """Why the scheduled crowd training should not run now, or None if it should."""
        last = await self.store.models.last_global(KIND)
        revision = 0 if last is None else last.trained_through
        new = await self.store.votes.votes_after(revision)
        if new < (self.min_votes if last is None else self.min_new_votes):
            return f"{new} new votes since the last crowd model"
        return None

    async def retrain(self, trigger: str) -> CrowdOutcome:
        """Train a crowd model on everyone's votes now; promote it if not worse."""
        async with self._lock:
            return await self._retrain(trigger)

    # One function, as a head's retrain: the run row must be finished whatever step failed.
    async def _retrain(self, trigger: str) -> CrowdOutcome:
        encoder = self.crowd.encoder_version
        revision = await self.store.votes.latest_revision_overall()
        rows = await self.store.votes.everyones_labelled_embeddings(encoder)
        people = np.array([user_id for user_id, _ in rows], np.int64)
        n_people = len(np.unique(people))
        if len(rows) < self.min_votes or n_people < self.min_people:
            reason = (
                f"needs {self.min_votes} votes from {self.min_people} people "
                f"(has {len(rows)} from {n_people})"
            )
            return CrowdOutcome(None, False, reason, people=n_people)
        x = await self.text.with_text([(v.submission_id, v.vector) for _, v in rows])
        liked = np.array([v.vote.liked for _, v in rows], bool)
        weights = np.array([v.vote.weight for _, v in rows], np.float64)
        held = np.array([is_holdout(v.submission_id) for _, v in rows], bool)
        run_id = await self.store.runs.start_training_run(None, KIND, trigger)
        try:
            candidate = await asyncio.to_thread(
                train_crowd,
                x[~held],
                liked[~held],
                weights[~held],
                people[~held],
                {"encoder_version": encoder},
            )
            active = self.crowd.model
            new_auc = evaluate_crowd(candidate, x[held], liked[held], people[held])
            old_auc = (
                None
                if active is None
                else evaluate_crowd(active, x[held], liked[held], people[held])
            )
            promote, reason = promote_crowd(new_auc, old_auc)
            version = await self.store.models.next_model_version(None, KIND)
            relpath = f"models/crowd/v{version}.npz"
            path = self.data_dir.path(relpath)
            path.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(candidate.save, path)
            model = await self.store.models.add_model_version(
                NewModel(
                    owner_user_id=None,
                    kind=KIND,
                    version=version,
                    file_path=relpath,
                    encoder_version=encoder,
                    train_size=int((~held).sum()),
                    holdout_size=int(held.sum()),
                    metrics={"auc": new_auc, "active_auc": old_auc, "people": float(n_people)},
                    trained_through=revision,
                ),
                promote=promote,
            )
        except Exception as error:
            log.exception("training the crowd model failed")
            await self.store.runs.finish_training_run(
                run_id, outcome="failed", n_labels=len(rows), detail=repr(error)
            )
            return CrowdOutcome(None, False, f"failed: {error}", people=n_people)
        if promote:
            self.crowd.promoted(model.id, candidate)
        await self.store.runs.finish_training_run(
            run_id,
            outcome="promoted" if promote else "rejected",
            n_labels=len(rows),
            model_version_id=model.id,
            detail=reason,
        )
        log.info("crowd model v%d: %s (%s)", version, "promoted" if promote else "rejected", reason)
        return CrowdOutcome(version, promote, reason, new_auc, old_auc, n_people)
