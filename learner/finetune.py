"""Fine-tune the CLIP image encoder on everyone's votes (gradual unfreezing).

One shared CLIP vision tower, one linear head per person (multi-task: a vote trains its own
person's head; tastes differ, so there is no single label). Two phases:

1. **Heads.** The encoder is frozen: every image is embedded once (no grad) and the heads
   train on those cached embeddings for ``head_epochs``. The encoder's weights stay
   bit-identical.
2. **Encoder.** The top ``unfreeze_blocks`` transformer blocks of the vision tower (plus its
   final layer norm and projection) are unfrozen and trained together with the heads, with
   AdamW at a learning rate ~100x lower than the heads', linear warm-up then cosine decay,
   gradient clipping, and mixed precision on CUDA. Images are decoded on the fly.

Loss: BCE on "liked" (any like = 1, a dislike = 0; each vote weighted, a super like more), plus
an optional supervised-contrastive term (SupCon, Khosla et al. 2020) per person: for an
anchor, positives are the same person's other examples with the same liked/disliked label,
and the contrast set is all of that person's other examples in the batch.

Pure: paths, examples and a config in; a ``save_pretrained`` directory and a
:class:`FinetuneResult` out. No SQL, no chat, no processes (``bot.finetune_process`` runs this
in a child process). The caller chooses the examples: leave out held-out votes
(``learner.training.is_holdout``) so the new encoder can be judged on votes it never saw.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import nn

from learner.durable import fsync_directory, fsync_tree
from learner.finetune_trainer import PersonHeads, Trainer

if TYPE_CHECKING:
    from learner.encoder import ClipImageEncoder

FORMAT_VERSION = 1
METADATA_FILE = "finetune.json"  # written next to the weights: what this encoder was trained on

Phase = Literal["loading", "embedding", "heads", "encoder", "saving", "done"]


@dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune; every default carries its reason."""

    head_epochs: int = 20  # cheap (cached embeddings); heads must make sense before CLIP moves
    encoder_epochs: int = 3  # few: ~200 votes overfit a 88M-parameter tower quickly
    unfreeze_blocks: int = 4  # top blocks adapt, lower generic features stay; >= depth = all
    head_lr: float = 3e-3  # AdamW on standardised embeddings; 1e-3 is slow at ~7 steps/epoch
    encoder_lr: float = 3e-5  # 100x lower than the heads: nudge CLIP (WiSE-FT uses 3e-5)
    weight_decay: float = 0.1  # decoupled decay on matrices, as CLIP fine-tuning recipes use
    warmup_fraction: float = 0.1  # of encoder-phase steps: no large early updates from noisy heads
    batch_size: int = 32  # ViT-B/32 peaks ~2 GB RSS (4 blocks); SupCon needs pairs per person
    grad_clip: float = 1.0  # global L2 norm; guards the encoder against a bad batch
    contrastive_weight: float = 0.0  # SupCon term weight; 0 = off (BCE only)
    temperature: float = 0.1  # SupCon temperature; 0.07-0.1 is the usual range
    mixed_precision: bool = True  # autocast on CUDA (bf16, else fp16 + scaler): ~2x faster
    cpu_bf16: bool = False  # bf16 autocast on CPU: faster on AVX-512-BF16; fp32 is the safe default
    seed: int = 0  # batch order (heads start at zero): same inputs, same run
    device: str | None = None  # None = CUDA when available, else CPU
    torch_threads: int = 0  # CPU threads for torch; 0 = leave torch's default

    def __post_init__(self) -> None:
        if self.head_epochs < 0 or self.encoder_epochs < 0:
            raise ValueError("epochs must be >= 0")
        if self.unfreeze_blocks < 0:
            raise ValueError("unfreeze_blocks must be >= 0")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError("warmup_fraction must be in [0, 1)")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if self.contrastive_weight < 0 or self.grad_clip <= 0:
            raise ValueError("contrastive_weight must be >= 0 and grad_clip > 0")


@dataclass(frozen=True)
class FinetuneExample:
    """One vote: a retained image file, who voted (any stable int id), whether they liked
    it, and how much the vote weighs (a super like more than a like)."""

    image_path: Path
    person: int
    liked: bool
    weight: float = 1.0


@dataclass(frozen=True)
class FinetuneProgress:
    """Where a run is, for showing to a person (sent often: keep it small)."""

    phase: Phase
    epoch: int  # 1-based within the phase; 0 outside the epoch phases
    epochs: int
    step: int  # 1-based within the epoch
    steps: int
    loss: float | None  # mean training loss of the epoch so far
    seconds: float  # since the run started

    def describe(self) -> str:
        if self.phase in ("heads", "encoder"):
            loss = "" if self.loss is None else f", loss {self.loss:.4f}"
            return (
                f"{self.phase}: epoch {self.epoch}/{self.epochs}, "
                f"step {self.step}/{self.steps}{loss}"
            )
        if self.phase == "embedding":
            return f"embedding images: {self.step}/{self.steps}"
        return self.phase


@dataclass(frozen=True)
class EpochSummary:
    phase: Literal["heads", "encoder"]
    epoch: int
    loss: float  # mean total loss
    bce: float
    contrastive: float | None  # None when the term is off (or in the heads phase)
    seconds: float  # the heads phase's first epoch includes embedding every image once
    images: int


@dataclass(frozen=True)
class FinetuneResult:
    out_dir: Path | None  # None when stopped early: nothing is written then
    parent_version: str  # ClipImageEncoder.version of model_dir
    n_examples: int  # examples trained on (unreadable images left out)
    n_skipped: int  # examples whose image file was missing or unreadable
    people: tuple[int, ...]
    head_loss: float | None  # mean BCE of the last heads epoch
    encoder_loss: float | None  # mean total loss of the last encoder epoch
    seconds: float
    stopped_early: bool
    device: str
    history: tuple[EpochSummary, ...] = field(default=())


def partial_dir(out_dir: Path) -> Path:
    """Where a run writes before the atomic rename to ``out_dir`` (removable after a crash)."""
    return out_dir.parent / f".{out_dir.name}.partial"


def finetune(
    model_dir: str,
    examples: Sequence[FinetuneExample],
    out_dir: Path,
    config: FinetuneConfig,
    progress: Callable[[FinetuneProgress], None] = lambda p: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> FinetuneResult:
    """Fine-tune the CLIP at ``model_dir`` on ``examples``; save it to ``out_dir``.

    ``out_dir`` must not exist. The model is written to :func:`partial_dir` first and renamed
    into place at the end, so ``out_dir`` either holds a complete model or does not exist.
    ``should_stop`` is polled every step; when it says so, the run ends without saving and the
    result has ``stopped_early=True``. Raises ``ValueError`` when no example is usable.
    """
    # One function on purpose: both phases share the trainer, the loss history, the stop
    # poll and the report closure; apart, each would take most of them as arguments.
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists")
    for ex in examples:
        if not ex.weight > 0:
            raise ValueError(f"vote weight must be positive, got {ex.weight!r} for {ex.image_path}")
    if config.torch_threads > 0:
        torch.set_num_threads(config.torch_threads)

    def report(
        phase: Phase,
        epoch: int = 0,
        epochs: int = 0,
        step: int = 0,
        steps: int = 0,
        loss: float | None = None,
    ) -> None:
        progress(
            FinetuneProgress(phase, epoch, epochs, step, steps, loss, time.perf_counter() - started)
        )

    report("loading")
    # Imported here: transformers takes seconds to import, and a process that only starts,
    # watches or stops runs (bot.finetune_process and its child before this point) needs none.
    from learner.encoder import ClipImageEncoder

    # The same from_pretrained path (and preprocessing) as inference.
    encoder = ClipImageEncoder(model_dir, device=config.device)
    device = encoder.device
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)

    people = tuple(sorted({ex.person for ex in examples}))
    person_index = {p: i for i, p in enumerate(people)}
    heads = PersonHeads(encoder.dim, max(len(people), 1)).to(device)
    trainer = Trainer(encoder, heads, config, person_index)

    history: list[EpochSummary] = []
    head_loss: float | None = None
    encoder_loss: float | None = None
    usable: list[FinetuneExample] = []

    def outcome(saved_to: Path | None) -> FinetuneResult:
        """What this run did so far; `saved_to` None means it stopped early, nothing written."""
        return FinetuneResult(
            out_dir=saved_to,
            parent_version=encoder.version,
            n_examples=len(usable),
            n_skipped=len(examples) - len(usable),
            people=people,
            head_loss=head_loss,
            encoder_loss=encoder_loss,
            seconds=time.perf_counter() - started,
            stopped_early=saved_to is None,
            device=str(device),
            history=tuple(history),
        )

    # Phase 1: embed every image once with the frozen encoder, then train the heads on that.
    embed_started = time.perf_counter()
    cached: list[torch.Tensor] = []
    n_batches = math.ceil(len(examples) / config.batch_size)
    report("embedding", step=0, steps=n_batches)  # every phase and epoch announces its start
    for i, (batch, pixels) in enumerate(trainer.batches(examples, np.arange(len(examples))), 1):
        if should_stop():
            return outcome(None)
        if batch:
            cached.append(trainer.embed_frozen(pixels))
            usable.extend(batch)
        report("embedding", step=i, steps=n_batches)
    if not usable:
        raise ValueError(f"none of the {len(examples)} examples has a readable image")
    features = torch.cat(cached)
    embed_seconds = time.perf_counter() - embed_started

    for epoch in range(1, config.head_epochs + 1):
        epoch_started = time.perf_counter()
        order = rng.permutation(len(usable))
        steps = math.ceil(len(order) / config.batch_size)
        total, seen = 0.0, 0
        report("heads", epoch, config.head_epochs, 0, steps)
        for step in range(1, steps + 1):
            if should_stop():
                return outcome(None)
            idx = order[(step - 1) * config.batch_size : step * config.batch_size]
            loss = trainer.head_step([usable[j] for j in idx], features[torch.from_numpy(idx)])
            total, seen = total + loss * len(idx), seen + len(idx)
            report("heads", epoch, config.head_epochs, step, steps, total / seen)
        head_loss = total / seen
        seconds = time.perf_counter() - epoch_started + (embed_seconds if epoch == 1 else 0.0)
        history.append(EpochSummary("heads", epoch, head_loss, head_loss, None, seconds, seen))

    # Phase 2: unfreeze the top of the vision tower; images are decoded again every epoch.
    if config.encoder_epochs > 0:
        steps_per_epoch = math.ceil(len(usable) / config.batch_size)
        trainer.unfreeze(total_steps=steps_per_epoch * config.encoder_epochs)
        for epoch in range(1, config.encoder_epochs + 1):
            epoch_started = time.perf_counter()
            sums = np.zeros(3)  # total, bce, contrastive (weighted by batch size)
            seen = 0
            order = rng.permutation(len(usable))
            report("encoder", epoch, config.encoder_epochs, 0, steps_per_epoch)
            for step, (batch, pixels) in enumerate(trainer.batches(usable, order), 1):
                if should_stop():
                    return outcome(None)
                if not batch:  # a file vanished since the embedding pass
                    continue
                losses = trainer.encoder_step(batch, pixels)
                sums += np.asarray(losses) * len(batch)
                seen += len(batch)
                report(
                    "encoder",
                    epoch,
                    config.encoder_epochs,
                    step,
                    steps_per_epoch,
                    float(sums[0] / seen),
                )
            if seen == 0:
                raise ValueError("every image file disappeared during fine-tuning")
            mean = sums / seen
            encoder_loss = float(mean[0])
            history.append(
                EpochSummary(
                    "encoder",
                    epoch,
                    float(mean[0]),
                    float(mean[1]),
                    float(mean[2]) if config.contrastive_weight > 0 else None,
                    time.perf_counter() - epoch_started,
                    seen,
                )
            )

    if should_stop():
        return outcome(None)
    report("saving")
    metadata = {
        "format_version": FORMAT_VERSION,
        "parent_version": encoder.version,
        "config": asdict(config),
        "n_examples": len(usable),
        "n_skipped": len(examples) - len(usable),
        "n_people": len(people),
        "votes": {
            "liked": sum(ex.liked for ex in usable),
            "disliked": sum(not ex.liked for ex in usable),
        },
        "head_loss": head_loss,
        "encoder_loss": encoder_loss,
        "history": [asdict(h) for h in history],
        "seconds": time.perf_counter() - started,
    }
    _save_atomically(encoder, out_dir, metadata)
    result = outcome(out_dir)
    report("done")
    return result


def _save_atomically(encoder: ClipImageEncoder, out_dir: Path, metadata: dict[str, object]) -> None:
    """save_pretrained + the image processor into a partial directory, then rename it."""
    partial = partial_dir(out_dir)
    shutil.rmtree(partial, ignore_errors=True)  # left by a run that was killed
    try:
        model = encoder.model
        model.requires_grad_(False)
        nn.Module.eval(model)
        nn.Module.to(model, "cpu")  # save from the CPU: same bytes whatever device trained it
        model.save_pretrained(partial)
        encoder.processor.save_pretrained(partial)
        (partial / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str))
        fsync_tree(partial)
        os.replace(partial, out_dir)
        fsync_directory(out_dir.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
