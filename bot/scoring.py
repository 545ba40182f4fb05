"""Score an image for the person who sent it, store it, and say why (nearest liked images).

score_image: refuse early (claimed size, redelivery, rate) → download → hash → embed once
per content (decode on a worker thread, forward pass batched) → score with the sender's
head or the cold-start prior → store the submission in one transaction → explain.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

from bot import timing
from bot.active_heads import ActiveHeads
from bot.encoding import ServedEncoder
from bot.ratelimit import SlidingWindowLimit
from bot.settings import Settings
from bot.text_features import TextFeatures
from bot.vote_indexes import VoteIndexes
from domain import (
    AlreadyAnswered,
    IncomingImage,
    ModelVersion,
    Person,
    Refused,
    Scored,
    ScoreOutcome,
    User,
)
from learner.images import DecodedImage, ImageRejected
from storage.files import DataDir
from storage.store import Store

log = logging.getLogger(__name__)

Download = Callable[[], Awaitable[bytes]]


class ScoringService:
    def __init__(
        self,
        *,
        store: Store,
        data_dir: DataDir,
        encoder: ServedEncoder,
        heads: ActiveHeads,
        indexes: VoteIndexes,
        text: TextFeatures,
        settings: Settings,
    ) -> None:
        self.store = store
        self.data_dir = data_dir
        self.encoder = encoder
        self.heads = heads
        self.indexes = indexes
        self.text = text
        self.settings = settings
        self._rate_limit = SlidingWindowLimit(settings.images_per_minute, window_seconds=60)

    def check_claimed_size(self, claimed_bytes: int | None) -> Refused | None:
        limit = self.settings.max_image_bytes
        if claimed_bytes is not None and claimed_bytes > limit:
            return Refused("too_large_bytes", f"{claimed_bytes} bytes claimed", limit=limit)
        return None

    async def score_image(self, incoming: IncomingImage, download: Download) -> ScoreOutcome:
        """Download, decode, embed (once per content), score for the sender, store, explain."""
        async with self.encoder.scoring():  # not while the encoder is being switched
            with timing.timed("score_image"):
                return await self._score_image(incoming, download)

    async def _score_image(self, incoming: IncomingImage, download: Download) -> ScoreOutcome:
        refused = self.check_claimed_size(incoming.claimed_bytes)
        if refused:
            return refused
        with timing.stage("sqlite_read"):
            user = await self.store.people.user_of(incoming.person)
            earlier = await self.store.submissions.find_submission(
                user.id, incoming.chat_id, incoming.message_id
            )
        if earlier is not None and earlier.reply_message_id is not None:
            return AlreadyAnswered(earlier.id)  # redelivered: not a new image, not counted
        person = incoming.person
        if not self._rate_limit.allow((person.platform, person.platform_user_id)):
            return Refused("rate_limited")

        with timing.stage("download"):
            data = await download()
        loop = asyncio.get_running_loop()
        with timing.stage("hash"):
            sha256 = await loop.run_in_executor(None, lambda: hashlib.sha256(data).hexdigest())
        with timing.stage("sqlite_read"):
            known = await self.store.images.find_embedding(sha256, self.encoder.version)
        decoded = prepared = None
        if known is None:
            try:
                # Not on the CLIP thread: the next images decode while a forward pass runs.
                decoded, prepared = await self.encoder.decode_and_prepare(data)
            except ImageRejected as rejected:
                log.info("refused image from user %d: %s (%s)", user.id, rejected.reason, rejected)
                return refusal_of(rejected)
        stored = await self._embed_score_and_store(
            incoming, user, data, sha256, known, decoded, prepared
        )
        submission_id, image_id, vector, text_vector, score, active, by_crowd = stored
        await self.text.record(submission_id, incoming.caption, text_vector, data)
        with timing.stage("explain"):  # FAISS neighbours and earlier votes
            return await self._explain(
                user, submission_id, image_id, vector, score, active, by_crowd
            )

    # One function: its cleanup needs every piece that may be in flight (the file being
    # saved, the scorer being looked up).
    async def _embed_score_and_store(
        self,
        incoming: IncomingImage,
        user: User,
        data: bytes,
        sha256: str,
        known: tuple[int, bytes] | None,
        decoded: DecodedImage | None,
        prepared: object,
    ) -> tuple[int, int, np.ndarray, np.ndarray | None, float, ModelVersion | None, bool]:
        """While CLIP runs, keep the file and look up what will score the vector; then store
        the submission. Nothing half-written stays behind if any step fails: one function,
        because its cleanup needs every piece that may be in flight."""
        loop = asyncio.get_running_loop()
        saving: asyncio.Future[str] | None = None
        created_file = False
        if decoded is not None and self.settings.retain_images:
            rel = self.data_dir.image_relpath(sha256, decoded.format)
            created_file = not self.data_dir.path(rel).exists()
            saving = loop.run_in_executor(
                None, self.data_dir.save_image, sha256, decoded.format, data
            )
        scorer = asyncio.ensure_future(self.heads.scorer(user))
        try:
            if known is not None:
                vector = np.frombuffer(known[1], np.float32)
            else:
                vector = await self.encoder.embed(prepared)
            text_vector = await self.text.caption_vector(incoming.caption)
            with timing.stage("score"):
                score_with, active, by_crowd = await scorer
                score = score_with(vector, text_vector)
            file_path = None
            if saving is not None:
                with timing.stage("save_file"):
                    file_path = await saving
            with timing.stage("sqlite_write"):
                submission = await self.store.submissions.record_submission(
                    user_id=user.id,
                    chat_id=incoming.chat_id,
                    message_id=incoming.message_id,
                    caption=incoming.caption,
                    sha256=sha256,
                    byte_size=len(data),
                    width=decoded.width if decoded else 0,
                    height=decoded.height if decoded else 0,
                    image_format=decoded.format if decoded else "",
                    file_path=file_path,
                    encoder_version=self.encoder.version,
                    vector=np.ascontiguousarray(vector, np.float32).tobytes(),
                    dim=int(vector.shape[0]),
                    score=score,
                    model_version_id=None if active is None else active.id,
                )
        except BaseException:
            scorer.cancel()
            await asyncio.gather(scorer, return_exceptions=True)  # its error is not news
            if saving is not None:
                saved = (await asyncio.gather(saving, return_exceptions=True))[0]
                if created_file and isinstance(saved, str):
                    self.data_dir.path(saved).unlink(missing_ok=True)
            raise
        return submission.id, submission.image_id, vector, text_vector, score, active, by_crowd

    async def _explain(
        self,
        user: User,
        submission_id: int,
        image_id: int,
        vector: np.ndarray,
        score: float,
        active: ModelVersion | None,
        by_crowd: bool,
    ) -> Scored:
        """Nearest liked/disliked images, and whether this person rated this image before."""
        k = self.settings.similar_neighbours
        with timing.stage("faiss"):
            await self.indexes.refresh(user.id)  # votes other workers stored
            liked = self.indexes.nearest_liked(user.id, vector, k, exclude_image_id=image_id)
            disliked = self.indexes.nearest_disliked(user.id, vector, 1, exclude_image_id=image_id)
        earlier = await self.store.votes.image_vote(user.id, image_id)
        matched_image = image_id
        if earlier is None:
            nearest = max(liked[:1] + disliked, key=lambda n: n.similarity, default=None)
            if nearest is not None and nearest.similarity >= self.settings.duplicate_threshold:
                earlier = await self.store.votes.image_vote(user.id, nearest.image_id)
                matched_image = nearest.image_id
        matched_file = None if earlier is None else await self._image_path(matched_image)
        return Scored(
            submission_id=submission_id,
            score=score,
            model_version=None if active is None else active.version,
            close_liked=sum(n.similarity >= self.settings.similar_threshold for n in liked),
            closest_liked=liked[0].similarity if liked else None,
            closest_disliked=disliked[0].similarity if disliked else None,
            rated_before=None if earlier is None else earlier[1],
            vote_target=submission_id if earlier is None else earlier[0],
            matched_file=matched_file,
            by_crowd=by_crowd,
        )

    async def _image_path(self, image_id: int) -> Path | None:
        """The retained file of an image, if it is still on disk."""
        relpath = await self.store.images.image_file(image_id)
        if relpath is None or not self.data_dir.path(relpath).exists():
            return None
        return self.data_dir.path(relpath)

    async def _submission_vector(self, submission_id: int) -> tuple[int, np.ndarray] | None:
        """(image id, vector under the served encoder) of a submission, if both exist."""
        submission = await self.store.submissions.get_submission(submission_id)
        if submission is None:
            return None
        stored = await self.store.images.find_embedding_by_image(
            submission.image_id, self.encoder.version
        )
        return None if stored is None else (submission.image_id, np.frombuffer(stored, np.float32))

    async def score_for(self, person: Person, submission_id: int) -> Scored | None:
        """Score an image already sent (by anyone) for `person`: the group chat "my score"."""
        found = await self._submission_vector(submission_id)
        if found is None:
            return None
        image_id, vector = found
        user = await self.store.people.user_of(person)
        text_vector = await self.text.text_vector_of(submission_id)
        score_with, active, by_crowd = await self.heads.scorer(user)
        score = score_with(vector, text_vector)
        return await self._explain(user, submission_id, image_id, vector, score, active, by_crowd)

    async def similar_liked_images(
        self, person: Person, submission_id: int, k: int = 3
    ) -> list[tuple[Path, float]] | None:
        """Files of the `k` images this person liked that are closest to a submission, with
        their similarity. Only the person's own likes are searched. None if unknown."""
        found_vector = await self._submission_vector(submission_id)
        if found_vector is None:
            return None
        image_id, vector = found_vector
        user = await self.store.people.user_of(person)
        await self.indexes.refresh(user.id)
        found = []
        for n in self.indexes.nearest_liked(user.id, vector, k, exclude_image_id=image_id):
            path = await self._image_path(n.image_id)
            if path is not None:
                found.append((path, n.similarity))
        return found

    async def reply_sent(self, submission_id: int, reply_message_id: str) -> None:
        await self.store.submissions.set_reply_message(submission_id, reply_message_id)


def refusal_of(rejected: ImageRejected) -> Refused:
    """The decoder's refusal as a domain value: its reason, limit and what the file is."""
    limit = rejected.max_bytes if rejected.max_bytes is not None else rejected.max_pixels
    return Refused(rejected.reason.value, rejected.detail, limit, rejected.kind)
