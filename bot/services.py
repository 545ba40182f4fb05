"""The composition root: every service and the state they share, built once and closed once.

Adapters are handed a `Services` and call one method of one service per update. The state
more than one service reads — the served encoder, the FAISS indexes, the active heads, the
training lock — is built here and passed to each service that needs it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from bot.active_heads import ActiveHeads
from bot.admin import AdminService
from bot.backbone import BackboneTuner
from bot.crowd import CrowdTraining, SharedCrowd
from bot.encoding import ImageEmbedder, ServedEncoder, TextEmbedder
from bot.finetune_process import FinetuneRunner
from bot.job_notices import NoticeDelivery
from bot.notifications import Notifications
from bot.people import PeopleService
from bot.retraining import RetrainService
from bot.scoring import ScoringService
from bot.settings import Settings
from bot.text_features import TextFeatures
from bot.trainer import JobRunner, process_name
from bot.training_jobs import TrainingQueue
from bot.vote_indexes import VoteIndexes
from bot.votes import VoteService
from learner.finetune import FinetuneConfig, finetune
from storage.files import DataDir
from storage.store import Store

log = logging.getLogger(__name__)


class Services:
    def __init__(
        self,
        *,
        store: Store,
        data_dir: DataDir,
        embedder: ImageEmbedder,
        settings: Settings,
        text_encoder: TextEmbedder | None = None,
    ) -> None:
        # Long on purpose: this is the wiring diagram, read top to bottom, each collaborator
        # built once, before whatever needs it.
        self.settings = settings
        self.store = store
        self.data_dir = data_dir
        self.encoder = ServedEncoder(embedder, settings)
        self.indexes = VoteIndexes(store, data_dir.faiss, embedder.version, embedder.dim)
        self.crowd = SharedCrowd(
            store, data_dir, embedder.version, refresh_seconds=settings.model_refresh_seconds
        )
        self.heads = ActiveHeads(
            store,
            data_dir,
            encoder_version=embedder.version,
            dim=embedder.dim,
            text_weight=settings.text_weight,
            cache_people=settings.head_cache_people,
            files_kept=settings.head_files_kept,
            crowd=self.crowd,
        )
        self.text = TextFeatures(
            store,
            self.encoder,
            text_encoder,
            text_weight=settings.text_weight,
            ocr=settings.ocr,
            max_pixels=settings.max_image_pixels,
            max_bytes=settings.max_image_bytes,
        )
        self.training_lock = asyncio.Lock()  # one head training (or model switch) at a time
        self.notifications = Notifications()
        self.queue = TrainingQueue(store)  # training handed to trainers (bot/roles.py)
        if settings.role == "trainer":  # no platform here: a worker sends its messages
            self.notifications.fallback = self.queue.leave_notice
        self.scoring = ScoringService(
            store=store,
            data_dir=data_dir,
            encoder=self.encoder,
            heads=self.heads,
            indexes=self.indexes,
            text=self.text,
            settings=settings,
        )
        self.people = PeopleService(
            store=store,
            data_dir=data_dir,
            indexes=self.indexes,
            heads=self.heads,
            training_lock=self.training_lock,
        )
        self.admin = AdminService(
            store=store, data_dir=data_dir, heads=self.heads, training_lock=self.training_lock
        )
        self.retraining = RetrainService(
            store=store,
            data_dir=data_dir,
            heads=self.heads,
            text=self.text,
            indexes=self.indexes,
            crowd=self.crowd,
            notifications=self.notifications,
            training_lock=self.training_lock,
            min_votes=settings.head_min_votes,
            min_new_votes=settings.retrain_min_new_votes,
            pause_seconds=settings.retrain_pause_seconds if settings.retrain_after_votes else None,
            hand_off=self.queue.enqueue_head if settings.role == "worker" else None,
        )
        self.votes = VoteService(store, self.indexes, on_change=self.retraining.after_vote)
        self.crowd_training = CrowdTraining(
            store=store,
            data_dir=data_dir,
            text=self.text,
            crowd=self.crowd,
            min_people=settings.crowd_min_people,
            min_votes=settings.crowd_min_votes,
            min_new_votes=settings.crowd_min_new_votes,
        )
        self.backbone = self.make_backbone_tuner()
        name = process_name(settings.role)
        lease, attempts = settings.job_lease_seconds, settings.job_max_attempts
        self.jobs = JobRunner(
            store=store,
            retraining=self.retraining,
            crowd_training=self.crowd_training,
            backbone=self.backbone,
            name=name,
            lease_seconds=lease,
            max_attempts=attempts,
        )
        self.notices = NoticeDelivery(
            store=store,
            notifications=self.notifications,
            name=name,
            lease_seconds=lease,
            max_attempts=attempts,
        )

    @classmethod
    async def open(
        cls,
        settings: Settings,
        embedder: ImageEmbedder,
        text_encoder: TextEmbedder | None = None,
    ) -> Services:
        """Open the database, mark runs a dead process left 'running' as failed, sync FAISS.
        A trainer starting beside another marks that one's run under way failed too, until
        it finishes (its model and job are recorded either way)."""
        data_dir = DataDir(settings.data_dir, images=settings.image_dir)
        store = await Store.connect(settings.database())
        # A worker trains nothing of its own: a run under way is a live trainer's.
        abandoned = 0 if settings.role == "worker" else await store.runs.fail_abandoned_runs()
        if abandoned:
            log.warning("marked %d abandoned training run(s) as failed", abandoned)
        services = cls(
            store=store,
            data_dir=data_dir,
            embedder=embedder,
            settings=settings,
            text_encoder=text_encoder,
        )
        if settings.role != "trainer":  # a trainer searches no FAISS index
            await services.indexes.sync()
        await services.crowd.load()
        return services

    def make_backbone_tuner(
        self, *, config: FinetuneConfig | None = None, runner: FinetuneRunner = finetune
    ) -> BackboneTuner:
        return BackboneTuner(
            store=self.store,
            data_dir=self.data_dir,
            settings=self.settings,
            text=self.text,
            serving=self,
            training_lock=self.training_lock,
            config=config,
            runner=runner,
        )

    @property
    def encoder_version(self) -> str:
        return self.encoder.version

    async def switch_encoder(
        self,
        embedder: ImageEmbedder,
        before_switch: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Serve with another encoder (a promoted fine-tune): its FAISS indexes and heads.
        Its embeddings must be stored by the end of ``before_switch``, which runs once the
        images being scored are stored and while new ones wait (to embed those sent since
        the re-embedding began)."""

        async def while_paused() -> None:
            if before_switch is not None:
                await before_switch()
            await self.indexes.switch(embedder.version, embedder.dim)
            self.heads.switch(embedder.version, embedder.dim)
            await self.crowd.switch(embedder.version)

        await self.encoder.switch(embedder, while_paused)

    async def drain(self, timeout: float) -> None:
        """Before shutdown: start no more training or messages, cancel a fine-tune, and give
        retrain rounds in progress up to `timeout` seconds to stop between two people."""
        self.notifications.stopping = True
        await self.backbone.stop(timeout)
        await self.retraining.drain(timeout)

    async def close(self) -> None:
        self.backbone.cancel()  # the child is a daemon process: it cannot outlive us
        await self.text.close()
        self.indexes.flush()
        await self.encoder.close()
        self.retraining.close()
        await self.store.close()
