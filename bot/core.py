"""The chat-platform-free core: score an image, record a vote, retrain heads, report stats.

Platform adapters parse an update, make one call here, and render the record it
returns. Everything slow (hashing, decoding, CLIP, training) runs on worker
threads so the event loop keeps answering button taps.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import time
import zipfile
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from bot import timing
from bot.embedding_batcher import EmbeddingBatcher
from bot.head_cache import HeadCache
from bot.ratelimit import SlidingWindowLimit
from bot.settings import Settings
from learner.encoder import usable_cores
from learner.head import DISLIKE, LIKE, SUPER_LIKE, TasteHead, cold_start_scores
from learner.images import DecodedImage, ImageRejected, decode_image
from learner.ocr import extract_text, ocr_available
from learner.text import combine
from learner.training import HeadTrainingResult, train_and_compare, trainable
from storage.db import Database
from storage.files import DataDir
from storage.records import (
    ForgetReport,
    LabelledEmbedding,
    ModelVersion,
    NewModel,
    Submission,
    Totals,
    User,
    UserCounts,
    UserSummary,
    Vote,
)
from storage.store import Store
from storage.vectors import VoteIndex, index_directory

if TYPE_CHECKING:
    from bot.backbone import BackboneTuner

log = logging.getLogger(__name__)

VOTE_CODES = {Vote.DISLIKE: DISLIKE, Vote.LIKE: LIKE, Vote.SUPER_LIKE: SUPER_LIKE}


class ImageEmbedder(Protocol):
    """What the core needs of the CLIP encoder (learner.encoder.ClipImageEncoder)."""

    version: str
    dim: int

    def prepare(self, image: Image.Image) -> Any:
        """Preprocess one image for embed() (any thread); embed() takes either."""

    def embed(self, images: Sequence[Any]) -> np.ndarray: ...


class TextEmbedder(Protocol):
    """What the core needs of CLIP's text tower (learner.text.ClipTextEncoder)."""

    version: str

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class Person:
    """Who sent or tapped, as the platform identifies them."""

    platform: str
    platform_user_id: str
    display_name: str | None = None


@dataclass(frozen=True)
class IncomingImage:
    person: Person
    chat_id: str
    message_id: str
    caption: str | None
    claimed_bytes: int | None  # the size the platform reports, checked before downloading


@dataclass(frozen=True)
class Scored:
    submission_id: int  # this message's submission
    score: float
    model_version: int | None  # None = cold start
    close_liked: int  # liked images at least `similar_threshold` similar
    closest_liked: float | None  # None when the person has liked nothing yet
    closest_disliked: float | None = None
    # Set when the person already voted on this image (same content, or a near-identical
    # embedding): the buttons then change that earlier vote instead of asking again.
    rated_before: Vote | None = None
    vote_target: int = 0  # the submission the vote buttons act on

    def __post_init__(self) -> None:
        if not self.vote_target:
            object.__setattr__(self, "vote_target", self.submission_id)


@dataclass(frozen=True)
class Refused:
    reason: str  # ImageRejected.reason codes
    message: str  # one sentence for the person


@dataclass(frozen=True)
class AlreadyAnswered:
    submission_id: int


ScoreOutcome = Scored | Refused | AlreadyAnswered


@dataclass(frozen=True)
class VoteOutcome:
    submission_id: int
    vote: Vote
    changed: bool


@dataclass(frozen=True)
class Undone:
    submission: Submission
    vote: Vote  # the vote removed
    own_buttons: bool  # the reply to that image holds only its buttons (not an album's rows)


@dataclass(frozen=True)
class RetrainOutcome:
    user: User
    version: int | None  # None when nothing was trained
    promoted: bool
    auc: float | None
    # The active head's AUC on the same held-out votes as the candidate (what the promotion
    # compared; not the AUC recorded when it was trained, on other votes). None when there
    # was no active head to compare, or nothing was trained.
    previous_auc: float | None
    train_size: int
    reason: str


@dataclass(frozen=True)
class ModelList:
    versions: list[ModelVersion]  # oldest first
    removed: frozenset[int]  # versions whose file is gone (HEAD_FILES_KEPT): no rollback
    # Versions trained on another encoder's embeddings (before a promoted fine-tune): they
    # cannot score what the served encoder embeds, so no rollback either.
    other_encoder: frozenset[int]


class Rollback(Enum):
    DONE = "done"
    UNKNOWN_USER = "unknown user"
    NO_SUCH_VERSION = "no such version"
    FILE_REMOVED = "file removed"  # older than the HEAD_FILES_KEPT newest versions
    OTHER_ENCODER = "other encoder"  # trained before a promoted fine-tune of CLIP
    UNREADABLE = "file unreadable"  # truncated or corrupt: it would never score


@dataclass(frozen=True)
class LearningCurve:
    versions: list[ModelVersion]  # every trained head, oldest first
    votes: list[tuple[str, Vote]]  # (ISO time, vote), oldest first


@dataclass(frozen=True)
class Stats:
    counts: UserCounts
    active: ModelVersion | None
    totals: Totals | None  # admins only


Notifier = Callable[[User, str], Awaitable[None]]


class TasteService:
    def __init__(
        self,
        *,
        store: Store,
        data_dir: DataDir,
        embedder: ImageEmbedder,
        settings: Settings,
        text_encoder: TextEmbedder | None = None,
    ) -> None:
        self.store = store
        self.data_dir = data_dir
        self.embedder = embedder
        self.settings = settings
        # Text is used only with a tokenizer and TEXT_WEIGHT > 0.
        self.text_encoder = text_encoder if settings.text_weight > 0 else None
        self._background: set[asyncio.Task[None]] = set()  # OCR after the reply
        # Per-person FAISS caches of what each person liked / disliked, per encoder version.
        faiss_dir = index_directory(data_dir.faiss, embedder.version)
        self.liked_index = VoteIndex(faiss_dir, embedder.dim, kind="liked")
        self.disliked_index = VoteIndex(faiss_dir, embedder.dim, kind="disliked")
        # One thread for CLIP: torch already uses every core inside one forward pass.
        self._encode_pool = ThreadPoolExecutor(1, thread_name_prefix="clip")
        # Decoding and preprocessing: more threads than spare cores would only take CPU from
        # the forward pass and the event loop during a burst (asyncio's default pool has 6).
        self._decode_pool = ThreadPoolExecutor(_decode_threads(), thread_name_prefix="decode")
        # Images from different people that arrive together share one forward pass.
        self._batcher = EmbeddingBatcher(
            embedder,
            self._encode_pool,
            max_batch=settings.embed_batch_max,
            max_wait_ms=settings.embed_batch_wait_ms,
        )
        self._train_pool = ThreadPoolExecutor(1, thread_name_prefix="train")
        self.training_lock = asyncio.Lock()  # one head training (or model switch) at a time
        self.heads = HeadCache(settings.head_cache_people)  # each person's active head
        self._rate_limit = SlidingWindowLimit(settings.images_per_minute, window_seconds=60)
        # Switching encoders waits for the images being scored and holds new ones back, so
        # that no image is stored under one encoder's name with the other's vector.
        self._scoring_open = asyncio.Event()
        self._scoring_open.set()
        self._scoring_idle = asyncio.Event()
        self._scoring_idle.set()
        self._scoring_now = 0
        self.notifiers: dict[str, Notifier] = {}  # platform → how to message a person there
        self.backbone: BackboneTuner | None = None  # CLIP fine-tuning, set by open()
        self._stopping = False  # set by drain(): no new training, no notifications
        self._rounds: set[asyncio.Task[Any]] = set()  # retrain rounds in progress

    @classmethod
    async def open(
        cls,
        settings: Settings,
        embedder: ImageEmbedder,
        text_encoder: TextEmbedder | None = None,
    ) -> TasteService:
        """Open the database, mark runs a dead process left 'running' as failed, sync FAISS."""
        data_dir = DataDir(settings.data_dir)
        db = await Database.open(data_dir.database)
        store = Store(db)
        abandoned = await store.fail_abandoned_runs()
        if abandoned:
            log.warning("marked %d abandoned training run(s) as failed", abandoned)
        service = cls(
            store=store,
            data_dir=data_dir,
            embedder=embedder,
            settings=settings,
            text_encoder=text_encoder,
        )
        await service.sync_vote_indexes()
        from bot.backbone import BackboneTuner  # it builds on this module

        service.backbone = BackboneTuner(service)
        return service

    async def close(self) -> None:
        if self.backbone is not None:
            self.backbone.cancel()  # the child is a daemon process: it cannot outlive us
        for task in list(self._background):
            task.cancel()  # an unfinished OCR: the caption alone stays
        await asyncio.gather(*self._background, return_exceptions=True)
        self._flush_indexes()
        await self._batcher.close()
        self._encode_pool.shutdown(wait=True, cancel_futures=True)
        self._decode_pool.shutdown(wait=True, cancel_futures=True)
        self._train_pool.shutdown(wait=True, cancel_futures=True)
        await self.store.db.close()

    def _flush_indexes(self) -> None:
        self.liked_index.flush()
        self.disliked_index.flush()

    async def sync_vote_indexes(self) -> int:
        """Rebuild every person's FAISS index that is missing or stale; returns how many."""
        return await self._sync_indexes(
            self.liked_index, self.disliked_index, self.embedder.version
        )

    async def _sync_indexes(self, liked: VoteIndex, disliked: VoteIndex, encoder: str) -> int:
        rebuilt = 0
        for user_id in await self.store.users_with_votes():
            for index, is_liked in ((liked, True), (disliked, False)):
                vectors = await self.store.voted_image_vectors(user_id, encoder, liked=is_liked)
                rebuilt += index.sync(user_id, vectors)
        liked.flush()
        disliked.flush()
        return rebuilt

    async def switch_encoder(
        self,
        embedder: ImageEmbedder,
        before_switch: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Serve with another encoder (a promoted fine-tune): its FAISS indexes and heads.
        Its embeddings must be stored by the end of ``before_switch``, which runs once the
        images being scored are stored and while new ones wait (to embed those sent since
        the re-embedding began)."""
        self._scoring_open.clear()
        try:
            await self._scoring_idle.wait()
            if before_switch is not None:
                await before_switch()
            await self._switch_encoder(embedder)
        finally:
            self._scoring_open.set()

    async def _switch_encoder(self, embedder: ImageEmbedder) -> None:
        faiss_dir = index_directory(self.data_dir.faiss, embedder.version)
        liked = VoteIndex(faiss_dir, embedder.dim, kind="liked")
        disliked = VoteIndex(faiss_dir, embedder.dim, kind="disliked")
        await self._sync_indexes(liked, disliked, embedder.version)
        old_batcher = self._batcher
        self.embedder, self.liked_index, self.disliked_index = embedder, liked, disliked
        self._batcher = EmbeddingBatcher(
            embedder,
            self._encode_pool,
            max_batch=self.settings.embed_batch_max,
            max_wait_ms=self.settings.embed_batch_wait_ms,
        )
        self.heads.clear()
        await old_batcher.close()  # finishes what it had queued

    # -- scoring -------------------------------------------------------------

    def check_claimed_size(self, claimed_bytes: int | None) -> Refused | None:
        if claimed_bytes is not None and claimed_bytes > self.settings.max_image_bytes:
            return Refused(
                "too_large_bytes",
                f"That file is over {self.settings.max_image_bytes // (1024 * 1024)} MB; "
                "please send a smaller image.",
            )
        return None

    async def score_image(
        self, incoming: IncomingImage, download: Callable[[], Awaitable[bytes]]
    ) -> ScoreOutcome:
        """Download, decode, embed (once per content), score for the sender, store, explain."""
        await self._scoring_open.wait()  # not while the encoder is being switched
        self._scoring_now += 1
        self._scoring_idle.clear()
        try:
            with timing.timed("score_image"):
                return await self._score_image(incoming, download)
        finally:
            self._scoring_now -= 1
            if self._scoring_now == 0:
                self._scoring_idle.set()

    async def _score_image(
        self, incoming: IncomingImage, download: Callable[[], Awaitable[bytes]]
    ) -> ScoreOutcome:
        refused = self.check_claimed_size(incoming.claimed_bytes)
        if refused:
            return refused
        p = incoming.person
        with timing.stage("sqlite_read"):
            user = await self.store.get_or_create_user(
                p.platform, p.platform_user_id, p.display_name
            )
            earlier = await self.store.find_submission(
                user.id, incoming.chat_id, incoming.message_id
            )
        if earlier is not None and earlier.reply_message_id is not None:
            return AlreadyAnswered(earlier.id)  # redelivered: not a new image, not counted
        if not self._rate_limit.allow((p.platform, p.platform_user_id)):
            return Refused(
                "rate_limited",
                "You're sending images faster than I can learn from them; "
                "please wait a minute and send that one again.",
            )

        with timing.stage("download"):
            data = await download()
        loop = asyncio.get_running_loop()
        with timing.stage("hash"):
            sha256 = await loop.run_in_executor(None, lambda: hashlib.sha256(data).hexdigest())
        with timing.stage("sqlite_read"):
            known = await self.store.find_embedding(sha256, self.embedder.version)
        try:
            # Not on the CLIP thread: the next images decode while a forward pass runs.
            prepared = None if known else await self._decode_and_prepare(data)
        except ImageRejected as rejected:
            log.info("refused image from user %d: %s (%s)", user.id, rejected.reason, rejected)
            return Refused(rejected.reason, str(rejected))

        # While CLIP runs: keep the file, and look up what will score the vector.
        decoded = None if prepared is None else prepared[0]
        saving: asyncio.Future[str] | None = None
        created_file = False
        if decoded is not None and self.settings.retain_images:
            rel = self.data_dir.image_relpath(sha256, decoded.format)
            created_file = not self.data_dir.path(rel).exists()
            saving = loop.run_in_executor(
                None, self.data_dir.save_image, sha256, decoded.format, data
            )
        scorer = asyncio.ensure_future(self._scorer(user))
        file_path = None
        try:
            if known is not None:
                vector = np.frombuffer(known[1], np.float32)
            else:
                assert prepared is not None
                vector = await self._batcher.embed(prepared[1])
            text_vector = None
            if self.text_encoder is not None and incoming.caption:
                text_vector = await self._embed_text(incoming.caption)
            with timing.stage("score"):
                score_with, active = await scorer
                score = score_with(vector, text_vector)
            if saving is not None:
                with timing.stage("save_file"):
                    file_path = await saving
            with timing.stage("sqlite_write"):
                submission = await self.store.record_submission(
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
                    encoder_version=self.embedder.version,
                    vector=np.ascontiguousarray(vector, np.float32).tobytes(),
                    dim=int(vector.shape[0]),
                    score=score,
                    model_version_id=None if active is None else active.id,
                )
        except BaseException:
            scorer.cancel()
            await asyncio.gather(scorer, return_exceptions=True)  # its error is not news
            if saving is not None:
                # Nothing half-written stays behind: a file this request created goes.
                saved = (await asyncio.gather(saving, return_exceptions=True))[0]
                if created_file and isinstance(saved, str):
                    self.data_dir.path(saved).unlink(missing_ok=True)
            raise

        if self.text_encoder is not None:
            await self._record_text(submission.id, incoming.caption, text_vector, data)
        with timing.stage("explain"):  # FAISS neighbours and earlier votes
            return await self._explain(
                user, submission.id, submission.image_id, vector, score, active
            )

    async def _explain(
        self,
        user: User,
        submission_id: int,
        image_id: int,
        vector: np.ndarray,
        score: float,
        active: ModelVersion | None,
    ) -> Scored:
        """Nearest liked/disliked images, and whether this person rated this image before."""
        k = self.settings.similar_neighbours
        with timing.stage("faiss"):
            liked = self.liked_index.search(user.id, vector, k, exclude_image_id=image_id)
            disliked = self.disliked_index.search(user.id, vector, 1, exclude_image_id=image_id)
        earlier = await self.store.image_vote(user.id, image_id)
        if earlier is None:
            nearest = max(liked[:1] + disliked, key=lambda n: n.similarity, default=None)
            if nearest is not None and nearest.similarity >= self.settings.duplicate_threshold:
                earlier = await self.store.image_vote(user.id, nearest.image_id)
        return Scored(
            submission_id=submission_id,
            score=score,
            model_version=None if active is None else active.version,
            close_liked=sum(n.similarity >= self.settings.similar_threshold for n in liked),
            closest_liked=liked[0].similarity if liked else None,
            closest_disliked=disliked[0].similarity if disliked else None,
            rated_before=None if earlier is None else earlier[1],
            vote_target=submission_id if earlier is None else earlier[0],
        )

    async def _submission_vector(self, submission_id: int) -> tuple[Submission, np.ndarray] | None:
        submission = await self.store.get_submission(submission_id)
        if submission is None:
            return None
        stored = await self.store.find_embedding_by_image(
            submission.image_id, self.embedder.version
        )
        return None if stored is None else (submission, np.frombuffer(stored, np.float32))

    async def score_for(self, person: Person, submission_id: int) -> Scored | None:
        """Score an image already sent (by anyone) for `person`: the group chat "my score"."""
        found = await self._submission_vector(submission_id)
        if found is None:
            return None
        submission, vector = found
        user = await self._user(person)
        text_vector = None
        if self.text_encoder is not None:
            texts = await self.store.submission_text_vectors(
                [submission_id], self.text_encoder.version
            )
            if submission_id in texts:
                text_vector = np.frombuffer(texts[submission_id], np.float32)
        score, active = await self._score(user, vector, text_vector)
        return await self._explain(user, submission_id, submission.image_id, vector, score, active)

    async def _user(self, person: Person) -> User:
        return await self.store.get_or_create_user(
            person.platform, person.platform_user_id, person.display_name
        )

    def _decode(self, data: bytes) -> DecodedImage:
        return decode_image(
            data, max_pixels=self.settings.max_image_pixels, max_bytes=self.settings.max_image_bytes
        )

    async def _decode_and_prepare(self, data: bytes) -> tuple[DecodedImage, Any]:
        """Decode and preprocess on a worker thread, so the CLIP thread only runs forwards."""

        def work() -> tuple[DecodedImage, Any, float, float]:
            started = time.perf_counter()
            decoded = self._decode(data)
            decoded_at = time.perf_counter()
            prepared = self.embedder.prepare(decoded.image)
            return decoded, prepared, decoded_at - started, time.perf_counter() - decoded_at

        decoded, prepared, decode_s, prepare_s = await asyncio.get_running_loop().run_in_executor(
            self._decode_pool, work
        )
        timing.add("decode", decode_s)
        timing.add("preprocess", prepare_s)
        return decoded, prepared

    async def _score(
        self, user: User, vector: np.ndarray, text_vector: np.ndarray | None = None
    ) -> tuple[float, ModelVersion | None]:
        score_with, active = await self._scorer(user)
        return score_with(vector, text_vector), active

    async def _scorer(
        self, user: User
    ) -> tuple[Callable[[np.ndarray, np.ndarray | None], float], ModelVersion | None]:
        """What scores a vector for ``user`` (their active head, else the cold-start prior)."""
        active = await self.store.active_model(user.id)
        head = (
            await self._load_head(active)
            if active is not None and active.encoder_version == self.embedder.version
            else None
        )
        if head is not None:
            weight = self.settings.text_weight

            def with_head(vector: np.ndarray, text_vector: np.ndarray | None) -> float:
                seen = combine(vector, text_vector, weight)
                return float(head.predict(seen.reshape(1, -1))[0])

            return with_head, active
        # Cold start (no head for this encoder yet, or its file is unreadable): the prior
        # uses the votes so far.
        votes = await self.store.labelled_embeddings(user.id, self.embedder.version)
        liked = [np.frombuffer(v.vector, np.float32) for v in votes if v.vote.is_liked]
        disliked = [np.frombuffer(v.vector, np.float32) for v in votes if not v.vote.is_liked]
        dim = self.embedder.dim

        def with_prior(vector: np.ndarray, text_vector: np.ndarray | None) -> float:
            prior = cold_start_scores(
                vector.reshape(1, -1),
                np.stack(liked) if liked else np.zeros((0, dim), np.float32),
                np.stack(disliked) if disliked else np.zeros((0, dim), np.float32),
            )
            return float(prior[0])

        return with_prior, None

    # -- text (captions, OCR) --------------------------------------------------

    async def _embed_text(self, text: str) -> np.ndarray:
        assert self.text_encoder is not None
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self._encode_pool, self.text_encoder.embed, [text])
        return np.asarray(vectors[0], np.float32)

    async def _record_text(
        self,
        submission_id: int,
        caption: str | None,
        caption_vector: np.ndarray | None,
        data: bytes,
    ) -> None:
        """Store the caption's embedding now; read text in the image after the reply (OCR
        takes ~0.4 s a screenshot, several CLIP forwards) and store caption + text then."""
        assert self.text_encoder is not None
        if caption and caption_vector is not None:
            await self.store.put_submission_text(
                submission_id, self.text_encoder.version, caption, caption_vector.tobytes()
            )
        if self.settings.ocr and ocr_available():
            task = asyncio.create_task(self._read_text_in_image(submission_id, caption, data))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _read_text_in_image(
        self, submission_id: int, caption: str | None, data: bytes
    ) -> None:
        assert self.text_encoder is not None
        loop = asyncio.get_running_loop()
        try:
            # Full resolution this time: small print does not survive decoding at 1/8 scale.
            decoded = await loop.run_in_executor(
                None,
                lambda: decode_image(
                    data,
                    max_pixels=self.settings.max_image_pixels,
                    max_bytes=self.settings.max_image_bytes,
                    target_size=1 << 16,
                ),
            )
        except ImageRejected:
            return
        found = await loop.run_in_executor(None, extract_text, decoded.image)
        if not found:
            return
        text = f"{caption}\n{found}" if caption else found
        vector = await self._embed_text(text)
        await self.store.put_submission_text(
            submission_id, self.text_encoder.version, text, vector.tobytes()
        )

    async def training_vectors(self, labelled: Sequence[LabelledEmbedding]) -> np.ndarray:
        """What a head trains on: each vote's image embedding, mixed with its text's when
        text is on (rows without text stay image-only)."""
        return await self._with_text([(v.submission_id, v.vector) for v in labelled])

    async def unvoted_vectors(self, user_id: int, encoder_version: str) -> np.ndarray | None:
        """What a head spreads the person's votes over (None if nothing): the images they
        sent without voting, each mixed with its text as a voted one is."""
        rows = await self.store.unlabelled_vectors(user_id, encoder_version)
        return await self._with_text(rows) if rows else None

    async def _with_text(self, rows: Sequence[tuple[int, bytes]]) -> np.ndarray:
        """(submission id, image vector) rows -> the vectors a head sees: each image mixed
        with its submission's text when text is on."""
        images = np.stack([np.frombuffer(vector, np.float32) for _, vector in rows])
        if self.text_encoder is None:
            return images
        ids = [submission_id for submission_id, _ in rows]
        texts = await self.store.submission_text_vectors(ids, self.text_encoder.version)
        text = np.zeros_like(images)
        for row, submission_id in enumerate(ids):
            if submission_id in texts:
                text[row] = np.frombuffer(texts[submission_id], np.float32)
        return combine(images, text, self.settings.text_weight)

    async def _load_head(self, model: ModelVersion) -> TasteHead | None:
        """The model's head, or None (logged) when its file is missing or unreadable: the
        person is then scored by the cold-start prior and their next retrain replaces it."""
        assert model.owner_user_id is not None, "heads belong to a person"
        head = self.heads.get(model.owner_user_id, model.id)
        if head is None:
            path = self.data_dir.path(model.file_path)
            try:
                head = await asyncio.get_running_loop().run_in_executor(None, TasteHead.load, path)
            except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile):
                log.exception("cannot read the head file of model %d (%s)", model.id, path)
                return None
            self.heads.put(model.owner_user_id, model.id, head)
        return head

    async def reply_sent(self, submission_id: int, reply_message_id: str) -> None:
        await self.store.set_reply_message(submission_id, reply_message_id)

    # -- votes ---------------------------------------------------------------

    async def record_vote(
        self, person: Person, submission_id: int, vote: Vote
    ) -> VoteOutcome | None:
        """Commit the vote (before the platform acknowledges it) and keep FAISS in step."""
        user = await self.store.get_or_create_user(
            person.platform, person.platform_user_id, person.display_name
        )
        change = await self.store.upsert_vote(user.id, submission_id, vote)
        if change is None:
            return None
        if change.changed:
            await self._reindex_image(user.id, change.submission.image_id)
        return VoteOutcome(submission_id, vote, change.changed)

    async def _reindex_image(self, user_id: int, image_id: int) -> None:
        """Put the image in the liked and/or disliked index as this person's votes now say."""
        vector: np.ndarray | None = None
        for index, liked in ((self.liked_index, True), (self.disliked_index, False)):
            if await self.store.image_has_vote(user_id, image_id, liked=liked):
                if vector is None:
                    stored = await self.store.find_embedding_by_image(
                        image_id, self.embedder.version
                    )
                    if stored is None:
                        return
                    vector = np.frombuffer(stored, np.float32)
                index.add(user_id, image_id, vector)
            else:
                index.remove(user_id, image_id)

    async def undo_last_vote(self, person: Person) -> Undone | None:
        """Remove the person's most recent vote; the image goes back to unrated."""
        user = await self._user(person)
        last = await self.store.last_vote(user.id)
        if last is None:
            return None
        submission, vote = last
        await self.store.delete_vote(user.id, submission.id)
        await self._reindex_image(user.id, submission.image_id)
        reply = submission.reply_message_id
        own = reply is not None and (
            await self.store.count_answered_by(submission.user_id, submission.chat_id, reply) == 1
        )
        return Undone(submission, vote, own_buttons=own)

    async def forget(self, person: Person) -> ForgetReport | None:
        """Delete everything of this person: rows, vectors, model files, image files only
        they sent. None if the bot never heard of them."""
        user = await self.store.find_user(person.platform, person.platform_user_id)
        if user is None:
            return None
        async with self.training_lock:  # not while one of their models is being trained
            report = await self.store.forget_user(user.id)
            self.liked_index.forget(user.id)
            self.disliked_index.forget(user.id)
            for relpath in report.files:
                self.data_dir.path(relpath).unlink(missing_ok=True)
            # The whole folder: a head file no row names (a crash between writing it and
            # recording it) holds their images' vectors too, and user ids can be reused.
            heads = self.data_dir.path(self.data_dir.heads_relpath(user.id))
            await asyncio.to_thread(shutil.rmtree, heads, True)
            for other_id, image_id in report.others_votes:  # their votes on its group images
                await self._reindex_image(other_id, image_id)
        self.heads.forget(user.id)
        return report

    async def export(self, person: Person) -> list[dict[str, object]]:
        user = await self.store.find_user(person.platform, person.platform_user_id)
        return [] if user is None else await self.store.export_rows(user.id)

    async def similar_liked_images(
        self, person: Person, submission_id: int, k: int = 3
    ) -> list[tuple[Path, float]] | None:
        """Files of the `k` images this person liked that are closest to a submission, with
        their similarity. Only the person's own likes are searched. None if unknown."""
        found_vector = await self._submission_vector(submission_id)
        if found_vector is None:
            return None
        submission, vector = found_vector
        user = await self._user(person)
        found = []
        for n in self.liked_index.search(user.id, vector, k, exclude_image_id=submission.image_id):
            relpath = await self.store.image_file(n.image_id)
            if relpath is not None and self.data_dir.path(relpath).exists():
                found.append((self.data_dir.path(relpath), n.similarity))
        return found

    async def learning_curve(self, person: Person) -> LearningCurve:
        user = await self._user(person)
        return LearningCurve(
            versions=await self.store.model_versions(user.id),
            votes=await self.store.vote_history(user.id),
        )

    # -- admin ---------------------------------------------------------------

    async def summaries(self) -> tuple[Totals, list[UserSummary]]:
        return await self.store.totals(), await self.store.user_summaries()

    async def models_of(self, platform: str, platform_user_id: str) -> ModelList | None:
        user = await self.store.find_user(platform, platform_user_id)
        if user is None:
            return None
        versions = await self.store.model_versions(user.id)
        removed = frozenset(
            m.version for m in versions if not self.data_dir.path(m.file_path).exists()
        )
        other_encoder = frozenset(
            m.version for m in versions if m.encoder_version != self.embedder.version
        )
        return ModelList(versions, removed, other_encoder)

    async def rollback(self, platform: str, platform_user_id: str, version: int) -> Rollback:
        user = await self.store.find_user(platform, platform_user_id)
        if user is None:
            return Rollback.UNKNOWN_USER
        async with self.training_lock:
            versions = await self.store.model_versions(user.id)
            model = next((m for m in versions if m.version == version), None)
            if model is None:
                return Rollback.NO_SUCH_VERSION
            if model.encoder_version != self.embedder.version:
                # Its encoder's embeddings are gone: it would never score (the person would
                # get the cold-start prior while /stats named this version).
                return Rollback.OTHER_ENCODER
            if not self.data_dir.path(model.file_path).exists():
                return Rollback.FILE_REMOVED
            # Read now, not at the next image: an unreadable file (logged) would leave the
            # person on the cold-start prior while /stats names this version.
            if await self._load_head(model) is None:
                return Rollback.UNREADABLE
            await self.store.activate_model_version(user.id, version)
            return Rollback.DONE

    async def _remove_old_head_files(self, user_id: int) -> None:
        """Keep the active head's file and the HEAD_FILES_KEPT newest others (for rollback).

        A person is retrained every few votes: without this, one with 1,000 votes would
        leave ~200 files of up to ~2 MB (at 2,000 images; ~8 MB in memory, but since format
        4 the file keeps the anchors as float16 and rebuilds their smoothed features)."""
        keep = self.settings.head_files_kept
        if keep == 0:
            return
        old = await self.store.head_files_beyond(user_id, keep)
        paths = [self.data_dir.path(rel) for rel in old]
        await asyncio.get_running_loop().run_in_executor(None, _unlink_all, paths)

    async def retrain_person(
        self, platform: str, platform_user_id: str, trigger: str
    ) -> RetrainOutcome | None:
        """Retrain one person now (/retrain <user id>); like a round, tell them of a better model."""
        user = await self.store.find_user(platform, platform_user_id)
        if user is None:
            return None
        outcome = await self.retrain_user(user.id, trigger)
        if outcome is not None and outcome.promoted:
            await self._notify(outcome.user, _promotion_message(outcome))
        return outcome

    # -- retraining ----------------------------------------------------------

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
            due = await self.store.users_with_new_votes(min_new_votes)
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
                    if outcome.promoted:
                        await self._notify(outcome.user, _promotion_message(outcome))
                if on_progress is not None:
                    await on_progress(done, len(due))
            return outcomes
        finally:
            self._flush_indexes()
            self._rounds.discard(task)

    async def _failed_outcome(self, user_id: int, error: Exception) -> RetrainOutcome | None:
        user = await self.store.get_user(user_id)
        if user is None:  # forgotten since: nobody to report on
            return None
        reason = f"training failed ({type(error).__name__}; see the log)"
        return RetrainOutcome(user, None, False, None, None, 0, reason)

    async def drain(self, timeout: float) -> None:
        """Before shutdown: start no more training, cancel a fine-tune, and give retrain
        rounds in progress up to `timeout` seconds to stop between two people."""
        self._stopping = True
        if self.backbone is not None:
            await self.backbone.stop(timeout)
        rounds = [t for t in self._rounds if t is not asyncio.current_task()]
        if rounds:
            _, pending = await asyncio.wait(rounds, timeout=timeout)
            if pending:
                log.warning("%d retrain round(s) still running at shutdown", len(pending))

    async def retrain_user(
        self, user_id: int, trigger: str, *, min_new_votes: int = 0
    ) -> RetrainOutcome | None:
        """Train the person's head now; None if they are gone (a /forget since they were
        looked up: a round takes its list at the start, and forget waits for this lock) or,
        with ``min_new_votes``, if they no longer have that many new votes."""
        async with self.training_lock:
            # Checked at their turn, under the lock: a round that overlaps this one (a
            # scheduled tick during /retrain all) may have trained them on these votes.
            if min_new_votes > 0 and await self.store.new_votes(user_id) < min_new_votes:
                return None
            return await self._retrain_user(user_id, trigger)

    async def _retrain_user(self, user_id: int, trigger: str) -> RetrainOutcome | None:
        user = await self.store.get_user(user_id)
        if user is None:
            return None
        encoder = self.embedder.version
        revision = await self.store.latest_revision(user_id)
        labelled = await self.store.labelled_embeddings(user_id, encoder)
        submission_ids = np.array([v.submission_id for v in labelled], np.int64)
        votes = np.array([VOTE_CODES[v.vote] for v in labelled], np.int8)
        active = await self.store.active_model(user_id)

        why_not = trainable(submission_ids, votes, self.settings.head_min_votes)
        if why_not is not None:
            # Not a run: nothing is trained, and the scheduler would log one every tick.
            return RetrainOutcome(user, None, False, None, None, 0, why_not)

        embeddings = await self.training_vectors(labelled)
        unlabelled = await self.unvoted_vectors(user_id, encoder)
        active_head = (
            await self._load_head(active)
            if active is not None and active.encoder_version == encoder
            else None
        )
        loop = asyncio.get_running_loop()
        run_id = await self.store.start_training_run(user_id, "head", trigger)
        head_path: Path | None = None
        try:
            result: HeadTrainingResult = await loop.run_in_executor(
                self._train_pool,
                train_and_compare,
                submission_ids,
                embeddings,
                votes,
                unlabelled,
                active_head,
            )
            version = await self.store.next_model_version(user_id)
            rel = self.data_dir.head_relpath(user_id, version)
            head_path = self.data_dir.path(rel)
            head_path.parent.mkdir(parents=True, exist_ok=True)
            await loop.run_in_executor(None, result.head.save, head_path)
            model = await self.store.add_model_version(
                NewModel(
                    owner_user_id=user_id,
                    kind="head",
                    version=version,
                    parent_id=None if active is None else active.id,
                    file_path=rel,
                    encoder_version=encoder,
                    train_size=result.train_size,
                    holdout_size=result.candidate.size,
                    metrics=result.metrics(),
                    trained_through=revision,
                ),
                promote=result.promote,
            )
        except Exception as error:
            log.exception("training user %d failed", user_id)
            if head_path is not None:  # no row names it, so /forget would not delete it
                head_path.unlink(missing_ok=True)
            await self.store.finish_training_run(
                run_id, outcome="failed", n_labels=len(votes), detail=repr(error)
            )
            raise
        if result.promote:  # a rejected candidate scores nothing: keep the active one
            self.heads.put(user_id, model.id, result.head)
        await self._remove_old_head_files(user_id)
        await self.store.finish_training_run(
            run_id,
            outcome="promoted" if result.promote else "rejected",
            n_labels=len(votes),
            model_version_id=model.id,
            detail=result.reason,
        )
        log.info(
            "user %d head v%d: %s (%s)",
            user_id,
            version,
            "promoted" if result.promote else "rejected",
            result.reason,
        )
        return RetrainOutcome(
            user,
            version,
            result.promote,
            result.candidate.auc,
            None if result.active is None else result.active.auc,
            result.train_size,
            result.reason,
        )

    async def _notify(self, user: User, text: str) -> None:
        notifier = self.notifiers.get(user.platform)
        if notifier is None:
            return
        if self._stopping:  # platforms are closing; the model is promoted all the same
            log.info("not telling user %d about their new model: shutting down", user.id)
            return
        try:
            await notifier(user, text)
        except Exception:  # a blocked bot or a deleted chat must not stop the retrain loop
            log.warning("could not notify user %d", user.id, exc_info=True)

    # -- stats ---------------------------------------------------------------

    async def stats(self, person: Person, *, include_totals: bool) -> Stats:
        user = await self.store.get_or_create_user(
            person.platform, person.platform_user_id, person.display_name
        )
        return Stats(
            counts=await self.store.user_counts(user.id),
            active=await self.store.active_model(user.id),
            totals=await self.store.totals() if include_totals else None,
        )


def _decode_threads() -> int:
    """Half the usable cores, at least one: the other half runs CLIP and the event loop."""
    return max(1, usable_cores() // 2)


def _unlink_all(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _promotion_message(outcome: RetrainOutcome) -> str:
    auc = "n/a" if outcome.auc is None else f"{outcome.auc:.2f}"
    was = "" if outcome.previous_auc is None else f", was {outcome.previous_auc:.2f}"
    return f"Your model v{outcome.version} is ready: AUC {auc}{was}."
