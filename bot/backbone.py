"""Fine-tune the CLIP backbone on everyone's votes, and promote it only when it helps.

One run (`BackboneTuner.run`):

1. Checks: image retention is on, and enough votes have a retained image file.
2. Trains in a separate process (`bot.finetune_process.FinetuneJob`): heads only, then
   the top of the vision encoder at a much lower learning rate. Held-out votes (the
   fixed 1-in-5 hash of `learner.training.is_holdout`) are never trained on, nor is any
   image that is held out for someone (`training_examples`).
3. Loads the new encoder and re-embeds every retained image with it.
4. For each person, trains a head on the old embeddings and one on the new, on the same
   training votes, and scores both on the same held-out votes. The new encoder is
   promoted only if its holdout AUC, averaged over people (weighted by their held-out
   votes), is higher.
5. Promotion: scoring pauses (the images in flight are stored first), the images sent
   since step 3 are embedded, and in one transaction the encoder row and every person's
   new head become active. Then the service switches encoders and rebuilds FAISS, scoring
   resumes, and the old encoder's embeddings are dropped. Otherwise, or if any of this
   fails or is cancelled before that transaction, the new embeddings and weights are
   deleted and everything stays as it was.

A crash or kill of the child leaves the active models untouched; the run is recorded as
failed (and one left 'running' by a dead bot is marked failed at the next start).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from bot import backbone_compare as comparison
from bot.encoding import ImageEmbedder
from bot.finetune_process import FinetuneFailed, FinetuneJob, FinetuneRunner
from bot.settings import Settings
from bot.text_features import TextFeatures
from domain import BackboneOutcome, ModelVersion, NewModel
from learner.encoder import ClipImageEncoder
from learner.finetune import FinetuneConfig, FinetuneProgress, finetune
from storage.files import DataDir
from storage.store import Store
from storage.urls import parse_database_url

log = logging.getLogger(__name__)

Progress = comparison.Progress


class EncoderSwitch(Protocol):
    """What the tuner needs of serving: the encoder in use, and a way to replace it."""

    @property
    def encoder_version(self) -> str: ...

    async def switch_encoder(
        self, embedder: ImageEmbedder, before_switch: Callable[[], Awaitable[None]]
    ) -> None: ...


async def model_to_load(settings: Settings) -> str:
    """The active fine-tuned encoder's directory if there is one, else CLIP_MODEL."""
    data_dir = DataDir(settings.data_dir)
    sqlite_file = parse_database_url(settings.database()).path
    if sqlite_file is not None and not sqlite_file.exists():
        return settings.clip_model
    store = await Store.connect(settings.database())
    try:
        active = await store.models.active_global("backbone")
    finally:
        await store.close()
    return settings.clip_model if active is None else str(data_dir.path(active.file_path))


class BackboneTuner:
    def __init__(
        self,
        *,
        store: Store,
        data_dir: DataDir,
        settings: Settings,
        text: TextFeatures,
        serving: EncoderSwitch,
        training_lock: asyncio.Lock,
        config: FinetuneConfig | None = None,
        runner: FinetuneRunner = finetune,
    ) -> None:
        self.store = store
        self.data_dir = data_dir
        self.settings = settings
        self.text = text
        self.serving = serving
        # Shared with head retraining: the comparison takes per-person head versions, so no
        # retrain may interleave with it.
        self.training_lock = training_lock
        self.config = config or FinetuneConfig(
            head_epochs=self.settings.finetune_head_epochs,
            encoder_epochs=self.settings.finetune_encoder_epochs,
            unfreeze_blocks=self.settings.finetune_unfreeze_blocks,
            contrastive_weight=self.settings.finetune_contrastive_weight,
        )
        self.runner = runner
        self.job: FinetuneJob | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[object] | None = None  # the one running run(), for stop()

    @property
    def running(self) -> bool:
        return self._lock.locked()

    def cancel(self) -> bool:
        if self.job is None or self.job.done:
            return False
        self.job.cancel()
        return True

    async def stop(self, timeout: float) -> None:
        """At shutdown: ask the child to stop, cancel the run wherever it is, and give it
        up to ``timeout`` seconds to remove what it made (before the database closes)."""
        task = self._task
        if task is None or task.done():
            return
        self.cancel()
        task.cancel()
        _, pending = await asyncio.wait([task], timeout=timeout)
        if pending:
            log.warning("the fine-tune did not stop within %.0f s", timeout)

    async def _remove_leftovers(self, out_dir: Path, serving: str) -> None:
        """What a run stopped by a crash or kill left: its model directory (no row names it:
        rows are written at the end) and the embeddings of encoders neither served nor
        recorded active (after a failed switch, a restart serves the recorded one)."""
        if out_dir.exists():
            log.warning("removing %s, left by an interrupted fine-tune", out_dir)
            await asyncio.to_thread(shutil.rmtree, out_dir, True)
        active = await self.store.models.active_global("backbone")
        keep = {serving} | ({active.encoder_version} if active is not None else set())
        dropped = await self.store.images.drop_embeddings_except(keep)
        if dropped:
            log.warning("dropped %d embeddings left by an interrupted fine-tune", dropped)

    async def why_not_due(self) -> str | None:
        """Why the scheduled fine-tune should not start now, or None if it should."""
        store = self.store
        votes = await store.votes.retained_votes()
        if len(votes) < self.settings.finetune_min_votes:
            return f"{len(votes)} votes with retained images, fewer than FINETUNE_MIN_VOTES"
        last = await store.models.last_global("backbone")
        new = len(votes) if last is None else await store.votes.votes_after(last.trained_through)
        if new < self.settings.finetune_min_new_votes:
            return f"{new} new votes since the last fine-tune, fewer than FINETUNE_MIN_NEW_VOTES"
        return None

    async def run(self, trigger: str, on_progress: Progress | None = None) -> BackboneOutcome:
        """One fine-tune, start to promotion decision. Only one runs at a time."""
        if self.running:
            return BackboneOutcome(None, False, "a fine-tune is already running")
        async with self._lock:
            self._task = asyncio.current_task()
            try:
                return await self._run(trigger, on_progress or _no_progress)
            finally:
                self._task = None

    async def _run(self, trigger: str, progress: Progress) -> BackboneOutcome:
        # One long function on purpose: what its except clause must undo depends on exactly
        # how far it got (lock held, promotion committed or not, which files were written),
        # and those facts live in its locals.
        if not self.settings.retain_images:
            return BackboneOutcome(
                None, False, "fine-tuning needs the image files, and RETAIN_IMAGES is off"
            )
        store, data_dir = self.store, self.data_dir
        votes = await store.votes.retained_votes()
        if len(votes) < self.settings.finetune_min_votes:
            return BackboneOutcome(
                None,
                False,
                f"needs {self.settings.finetune_min_votes} votes with retained images "
                f"(has {len(votes)})",
            )
        started = time.perf_counter()
        revision = await store.votes.latest_revision_overall()
        examples = comparison.training_examples(votes, data_dir)
        active = await store.models.active_global("backbone")
        parent = (
            self.settings.clip_model if active is None else str(data_dir.path(active.file_path))
        )
        version = await store.models.next_model_version(None, kind="backbone")
        relpath = f"models/backbones/v{version}"
        out_dir = data_dir.path(relpath)
        old_version = self.serving.encoder_version
        await self._remove_leftovers(out_dir, old_version)
        run_id = await store.runs.start_training_run(None, "backbone", trigger)
        new_version: str | None = None
        locked = False
        heads_written: list[Path] = []  # the comparison's head files, no row names them yet
        try:
            await progress(f"Fine-tuning CLIP v{version} on {len(examples)} votes…")
            self.job = FinetuneJob(
                parent,
                examples,
                out_dir,
                self.config,
                on_progress=_throttled(progress),
                runner=self.runner,
            )
            await self.job.start()
            result = await self.job.wait()
            if result.out_dir is None:
                raise FinetuneFailed("stopped before it produced a model")
            encoder = await asyncio.to_thread(
                ClipImageEncoder,
                str(out_dir),
                device=None if self.settings.device == "auto" else self.settings.device,
                torch_threads=self.settings.torch_threads,
                precision=self.settings.clip_precision,
                text_tower=False,  # captions keep the text tower that is already loaded
                engine=self.settings.clip_engine,  # a new encoder version: converted anew
                engine_cache=self.settings.data_dir / "engines",
            )
            new_version = encoder.version
            await comparison.reembed(store, data_dir, encoder, progress)
            await progress("Comparing the new encoder with the current one on held-out votes…")
            # Per-person head versions are taken now: no head retrain may interleave.
            await self.training_lock.acquire()
            locked = True
            comparisons = await self._compare(old_version, new_version, revision, heads_written)
            old_auc, new_auc, holdout = comparison.weighted(comparisons)
            promote, reason = comparison.decision(old_auc, new_auc, comparisons)
            metrics = {
                "auc": new_auc,
                "active_auc": old_auc,
                "train_seconds": result.seconds,
                "head_loss": result.head_loss,
                "encoder_loss": result.encoder_loss,
            }
            backbone = NewModel(
                owner_user_id=None,
                kind="backbone",
                version=version,
                parent_id=None if active is None else active.id,
                file_path=relpath,
                encoder_version=new_version,
                train_size=result.n_examples,
                holdout_size=holdout,
                metrics=metrics,
                trained_through=revision,
            )
            if promote:
                recorded: list[ModelVersion] = []

                async def embed_the_latest_then_record() -> None:
                    # While no image is being scored: those sent since the re-embedding began
                    # get their vectors first, so the encoder recorded active has them all.
                    missing = await store.images.retained_images_missing(old_version, new_version)
                    await comparison.reembed(store, data_dir, encoder, progress, missing)
                    heads = [c.head for c in comparisons]
                    recorded.append(
                        await store.models.add_backbone_version(backbone, promote=True, heads=heads)
                    )

                await self.serving.switch_encoder(encoder, embed_the_latest_then_record)
                [model] = recorded
                await store.images.drop_embeddings(old_version)
            else:
                model = await store.models.add_backbone_version(backbone, promote=False, heads=[])
                # Before the lock goes: these versions were never recorded, so a retrain
                # right after would write the same paths, and this would delete its file.
                for c in comparisons:
                    data_dir.path(c.head.file_path).unlink(missing_ok=True)
            self.training_lock.release()
            locked = False
            if not promote:
                await store.images.drop_embeddings(new_version)
                await asyncio.to_thread(shutil.rmtree, out_dir, True)
        except (Exception, asyncio.CancelledError) as error:
            # Cancelled: the bot is shutting down (drain) during the re-embedding or the
            # comparison; what the run made is removed all the same, then the cancel goes on.
            stopped = isinstance(error, asyncio.CancelledError)
            if stopped:
                log.warning("fine-tuning v%d stopped at shutdown", version)
            else:
                log.exception("fine-tuning v%d failed", version)
            try:
                # The database, not a local, says whether the promotion was committed: a
                # cancel can land while aiosqlite still runs the COMMIT.
                now_active = await store.models.active_global("backbone")
                committed = now_active is not None and now_active.version == version
                if locked and not committed:
                    # No row names these files, so /forget (which deletes the files rows
                    # name) would miss them. Before the lock goes, as for a rejected run: a
                    # retrain then writes the same paths.
                    for path in heads_written:
                        path.unlink(missing_ok=True)
            finally:
                if locked:
                    self.training_lock.release()
            if committed:
                # Its embeddings are complete; a restart serves it (its rows say so).
                log.error("backbone v%d is recorded active but not served: restart", version)
            else:
                if new_version is not None:
                    await store.images.drop_embeddings(new_version)
                await asyncio.to_thread(shutil.rmtree, out_dir, True)
            detail = "stopped at shutdown" if stopped else str(error)[:2000]
            await store.runs.finish_training_run(
                run_id, outcome="failed", n_labels=len(examples), detail=detail
            )
            if stopped:
                raise
            return BackboneOutcome(
                version,
                False,
                f"failed: {error}",
                examples=len(examples),
                seconds=time.perf_counter() - started,
            )
        finally:
            self.job = None
        await store.runs.finish_training_run(
            run_id,
            outcome="promoted" if promote else "rejected",
            n_labels=len(examples),
            model_version_id=model.id,
            detail=reason,
        )
        log.info("backbone v%d: %s", version, reason)
        return BackboneOutcome(
            version,
            promote,
            reason,
            new_auc,
            old_auc,
            comparison.compared(comparisons),
            len(examples),
            time.perf_counter() - started,
        )

    async def _compare(
        self, old_version: str, new_version: str, revision: int, written: list[Path]
    ) -> list[comparison.PersonComparison]:
        return await comparison.compare_heads(
            self.store,
            self.data_dir,
            self.text,
            self.settings.head_min_votes,
            old_version,
            new_version,
            revision,
            written,
        )


async def _no_progress(_: str) -> None:
    return None


def _throttled(progress: Progress, every_s: float = 3.0) -> Callable[[FinetuneProgress], None]:
    """FinetuneJob calls back synchronously (on the loop) and often; forward one message
    every few seconds."""
    last = 0.0
    tasks: set[asyncio.Task[None]] = set()  # a task nobody holds may be collected mid-way

    def forward(p: FinetuneProgress) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= every_s or p.phase == "done":
            last = now
            task = asyncio.get_running_loop().create_task(progress(f"Fine-tuning: {p.describe()}"))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    return forward
