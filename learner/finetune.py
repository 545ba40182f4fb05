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

Loss: BCE on "liked" (LIKE and SUPER_LIKE = 1, DISLIKE = 0; a super like weighs more), plus
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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from learner.durable import fsync_directory, fsync_tree
from learner.head import SUPER_LIKE_WEIGHT
from learner.images import ImageRejected, decode_image

# Vote codes of this module's examples, until the bot's torch-free Vote definition replaces
# them here (learner.head takes liked / weight arrays and no longer defines codes).
DISLIKE, LIKE, SUPER_LIKE = 0, 1, 2

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
    super_like_weight: float = SUPER_LIKE_WEIGHT  # a super like is stronger evidence (as in heads)
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
    """One vote: a retained image file, who voted (any stable int id), and the vote code."""

    image_path: Path
    person: int
    vote: int  # DISLIKE, LIKE or SUPER_LIKE (learner.head)


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


def supcon_loss(
    features: torch.Tensor, groups: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Supervised contrastive loss within groups (people), averaged over anchors.

    ``features`` (n, d) are L2-normalised. For anchor i, the contrast set A(i) is every other
    example of the same group, the positives P(i) those in A(i) with the same label:

        L_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip / T) / sum_{a in A(i)} exp(s_ia / T) )

    Each log term is a log-softmax over a non-empty set, so L_i is finite and >= log |P(i)|
    (its floor, reached when positives coincide and negatives are far: not 0). Anchors with no
    positive in the batch are skipped; with none at all the loss is 0 (still differentiable).
    """
    n = features.shape[0]
    sims = (features @ features.T).float() / temperature
    eye = torch.eye(n, dtype=torch.bool, device=features.device)
    same_group = (groups[:, None] == groups[None, :]) & ~eye
    positive = same_group & (labels[:, None] == labels[None, :])
    n_pos = positive.sum(dim=1)
    anchors = n_pos > 0
    if not bool(anchors.any()):
        return sims.sum() * 0.0
    log_denominator = torch.logsumexp(sims.masked_fill(~same_group, -math.inf), dim=1)
    # masked_fill, not multiply: log_prob is -inf where same_group is False, and -inf * 0 = NaN.
    log_prob = (sims - log_denominator[:, None]).masked_fill(~positive, 0.0)
    per_anchor = -log_prob.sum(dim=1)[anchors] / n_pos[anchors]
    return per_anchor.mean()


class PersonHeads(nn.Module):
    """One linear logit per person over the standardised embedding: a weight matrix row each."""

    def __init__(self, dim: int, n_people: int) -> None:
        super().__init__()
        self.scale = math.sqrt(dim)  # unit vectors -> coordinates of ~unit scale
        self.linear = nn.Linear(dim, n_people)
        nn.init.zeros_(self.linear.weight)  # start at p = 0.5 for everyone
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor, people: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.linear(features.float() * self.scale)
        return logits.gather(1, people[:, None]).squeeze(1)


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
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists")
    for ex in examples:
        if ex.vote not in (DISLIKE, LIKE, SUPER_LIKE):
            raise ValueError(f"unknown vote code {ex.vote!r} for {ex.image_path}")
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
    trainer = _Trainer(encoder, heads, config, person_index)

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
            str(code): sum(ex.vote == code for ex in usable) for code in (DISLIKE, LIKE, SUPER_LIKE)
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


class _Trainer:
    """The model-side steps of a run: batches, frozen embedding, head and encoder steps."""

    def __init__(
        self,
        encoder: ClipImageEncoder,
        heads: PersonHeads,
        config: FinetuneConfig,
        person_index: dict[int, int],
    ) -> None:
        self.encoder = encoder
        self.model = encoder.model
        self.heads = heads
        self.config = config
        self.person_index = person_index
        self.device = encoder.device
        self.head_optimizer = torch.optim.AdamW(
            heads.parameters(), lr=config.head_lr, weight_decay=0.0
        )
        self.optimizer: torch.optim.Optimizer | None = None
        self.schedule: torch.optim.lr_scheduler.LambdaLR | None = None
        self.trainable: list[nn.Parameter] = []
        cuda = self.device.type == "cuda"
        self.amp_dtype: torch.dtype | None = None
        if cuda and config.mixed_precision:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif self.device.type == "cpu" and config.cpu_bf16:
            self.amp_dtype = torch.bfloat16  # bf16 keeps fp32's range: no loss scaling needed
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    # -- data -------------------------------------------------------------------------------

    def batches(
        self, examples: Sequence[FinetuneExample], order: np.ndarray
    ) -> Iterator[tuple[list[FinetuneExample], torch.Tensor]]:
        """(readable examples, pixels) per batch, in ``order``; the next batch loads meanwhile.

        One loader thread: Pillow releases the GIL while decoding and resizing, so the next
        batch is ready when the current step ends; only two batches are in memory at a time.
        """
        size = self.config.batch_size
        chunks = [
            [examples[int(j)] for j in order[i : i + size]] for i in range(0, len(order), size)
        ]
        with ThreadPoolExecutor(1, thread_name_prefix="finetune-load") as pool:
            pending: Future[tuple[list[FinetuneExample], torch.Tensor]] | None = None
            for i in range(len(chunks)):
                current = pool.submit(self._load, chunks[i]) if pending is None else pending
                pending = pool.submit(self._load, chunks[i + 1]) if i + 1 < len(chunks) else None
                yield current.result()
            if pending is not None:  # only when the consumer stopped early
                pending.cancel()

    def _load(self, chunk: list[FinetuneExample]) -> tuple[list[FinetuneExample], torch.Tensor]:
        kept: list[FinetuneExample] = []
        images: list[Image.Image] = []
        for ex in chunk:
            try:
                data = Path(ex.image_path).read_bytes()
                images.append(decode_image(data, target_size=self.encoder.input_size).image)
            except (OSError, ImageRejected):
                continue  # a deleted or unreadable file: leave that vote out
            kept.append(ex)
        return kept, self.encoder.preprocess(images)

    def _targets(
        self, batch: Sequence[FinetuneExample]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        people = torch.tensor([self.person_index[ex.person] for ex in batch], device=self.device)
        liked = torch.tensor([float(ex.vote != DISLIKE) for ex in batch], device=self.device)
        weight = torch.tensor(
            [self.config.super_like_weight if ex.vote == SUPER_LIKE else 1.0 for ex in batch],
            device=self.device,
        )
        return people, liked, weight

    # -- model ------------------------------------------------------------------------------

    def _autocast(self) -> AbstractContextManager[object]:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        outputs = self.model.vision_model(pixel_values=pixels.to(self.device, non_blocking=True))
        pooled = outputs.pooler_output if hasattr(outputs, "pooler_output") else outputs[1]
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    def embed_frozen(self, pixels: torch.Tensor) -> torch.Tensor:
        # no_grad, not inference_mode: these features are later inputs to head training.
        with torch.no_grad(), self._autocast():
            return self._features(pixels).detach()

    def _bce(self, batch: Sequence[FinetuneExample], features: torch.Tensor) -> torch.Tensor:
        people, liked, weight = self._targets(batch)
        logits = self.heads(features, people)
        losses = F.binary_cross_entropy_with_logits(logits, liked, reduction="none")
        return (losses * weight).sum() / weight.sum()

    def head_step(self, batch: Sequence[FinetuneExample], features: torch.Tensor) -> float:
        self.heads.train()
        loss = self._bce(batch, features.to(self.device))
        self.head_optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        nn.utils.clip_grad_norm_(self.heads.parameters(), self.config.grad_clip)
        self.head_optimizer.step()
        return float(loss.detach())

    def unfreeze(self, *, total_steps: int) -> None:
        """Make the top blocks of the vision tower trainable; set up AdamW and its schedule."""
        vision = self.model.vision_model
        blocks = list(vision.encoder.layers)
        k = min(self.config.unfreeze_blocks, len(blocks))
        parts: list[nn.Module] = [
            *blocks[len(blocks) - k :],
            vision.post_layernorm,
            self.model.visual_projection,
        ]
        if k == len(blocks):  # the whole tower: the patch/position embeddings and first norm too
            parts += [vision.embeddings, vision.pre_layrnorm]
        for part in parts:
            part.requires_grad_(True)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in self.trainable if p.ndim >= 2]
        no_decay = [p for p in self.trainable if p.ndim < 2]  # biases and layer norms
        lr, wd = self.config.encoder_lr, self.config.weight_decay
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "lr": lr, "weight_decay": wd},
                {"params": no_decay, "lr": lr, "weight_decay": 0.0},
                {
                    "params": list(self.heads.parameters()),
                    "lr": self.config.head_lr,
                    "weight_decay": 0.0,
                },
            ],
            fused=self.device.type == "cuda",
        )
        warmup = round(self.config.warmup_fraction * total_steps)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: _warmup_cosine(step, warmup, total_steps)
        )
        nn.Module.train(vision)

    def encoder_step(
        self, batch: Sequence[FinetuneExample], pixels: torch.Tensor
    ) -> tuple[float, float, float]:
        """One step on encoder + heads; (total, bce, contrastive) losses."""
        assert self.optimizer is not None and self.schedule is not None
        with self._autocast():
            features = self._features(pixels)
        bce = self._bce(batch, features)
        contrastive = torch.zeros((), device=self.device)
        if self.config.contrastive_weight > 0:
            people, liked, _ = self._targets(batch)
            contrastive = supcon_loss(features, people, liked, self.config.temperature)
        loss = bce + self.config.contrastive_weight * contrastive
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {float(loss)} (bce {float(bce)})")
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(self.scaler.scale(loss))
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(
            self.trainable + list(self.heads.parameters()), self.config.grad_clip
        )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        return float(loss.detach()), float(bce.detach()), float(contrastive.detach())


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


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
