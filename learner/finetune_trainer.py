"""The fine-tune's model and steps: per-person heads, the supervised-contrastive loss, and the
trainer that embeds, unfreezes and steps (learner.finetune runs the phases)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from learner.clip_features import project
from learner.images import ImageRejected, decode_image

if TYPE_CHECKING:
    from learner.encoder import ClipImageEncoder
    from learner.finetune import FinetuneConfig, FinetuneExample


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


class Trainer:
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
        liked = torch.tensor([float(ex.liked) for ex in batch], device=self.device)
        weight = torch.tensor([ex.weight for ex in batch], device=self.device)
        return people, liked, weight

    # -- model ------------------------------------------------------------------------------

    def _autocast(self) -> AbstractContextManager[object]:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        outputs = self.model.vision_model(pixel_values=pixels.to(self.device, non_blocking=True))
        return project(outputs, self.model.visual_projection)

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
