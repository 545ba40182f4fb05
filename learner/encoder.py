"""CLIP image encoder: PIL images in, L2-normalised float32 embeddings out.

Users load ``openai/clip-vit-base-patch32`` (downloaded once by transformers); tests load a tiny
random CLIP saved to a temporary directory. Both go through the same ``from_pretrained`` calls.

Nothing here needs torchvision: preprocessing is done with Pillow + numpy + torch, following the
settings of transformers' PIL CLIP image processor (``CLIPImageProcessorPil``), which the tests
check it against.

Precision: the vision tower can run in bfloat16 (CPUs with AVX-512 BF16 or AMX, and CUDA) or
float16 (CUDA). The weights are cast once at load time (``torch.autocast`` would re-cast every
weight on every forward: on ViT-B/32 that costs most of what bf16 saves for one image).
Embeddings are always float32 and L2-normalised, and ``version`` is hashed from the float32
weights, so vectors from either precision are stored and compared as one encoder's
(bf16 embeddings are within cosine 0.999 of fp32; the tests check it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPModel

from learner.images import to_rgb

Precision = Literal["auto", "fp32", "bf16", "fp16"]
_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def resolve_precision(precision: str, device: torch.device) -> str:
    """Resolve "auto" to the fastest full-quality precision on ``device``; check the others.

    CUDA: bf16 where supported, else fp16. CPU: bf16 when the CPU has native bf16 dot products
    (AVX-512 BF16 or AMX; ~2x faster than fp32 on ViT-B/32), else fp32 (emulated bf16 is slower
    than fp32). fp16 on a CPU is allowed when asked for, never chosen.
    """
    if precision not in get_args(Precision):
        raise ValueError(f"precision must be one of {get_args(Precision)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def cpu_has_native_bf16() -> bool:
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def default_torch_threads() -> int:
    """CPU threads for the forward pass when not set: every usable core but one, at least one.

    The spare core keeps the event loop, downloads and decoding of the next images going
    while a forward pass runs; on a busy 2-core machine one torch thread is also the faster
    one (OpenMP threads that wait for each other lose more than the second core gives).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


class ClipImageEncoder:
    """Embeds images with CLIP's vision tower and projection.

    ``version`` names the weights and preprocessing (``"<name>@<hash12>"``): embeddings made
    under one version are comparable with each other and with nothing else.
    """

    def __init__(
        self,
        model_name_or_path: str,
        *,
        device: str | None = None,
        torch_threads: int | None = None,
        precision: Precision = "fp32",
    ) -> None:
        """``torch_threads``: None leaves torch's setting alone, 0 = :func:`default_torch_threads`.

        ``precision`` defaults to fp32 (training code loads the encoder too); the bot passes
        its ``CLIP_PRECISION`` setting, "auto" by default.
        """
        if torch_threads is not None:
            # process-wide: torch has one intra-op pool
            torch.set_num_threads(torch_threads or default_torch_threads())
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision: str = resolve_precision(precision, self.device)
        self.dtype: torch.dtype = _DTYPES[self.precision]

        # The PIL processor, not CLIPImageProcessor: in transformers 5 that one needs torchvision.
        self.processor: CLIPImageProcessorPil = CLIPImageProcessorPil.from_pretrained(
            model_name_or_path
        )
        model = CLIPModel.from_pretrained(model_name_or_path, dtype=torch.float32)
        model.requires_grad_(False)
        self._preprocessing = _PreprocessSettings.from_processor(self.processor)
        # Hash on the CPU, before moving: same weights + same preprocessing = same version.
        digest = _weights_digest(model, extra=self._preprocessing.describe())
        self.version: str = f"{_short_name(model_name_or_path)}@{digest[:12]}"
        # In place, through nn.Module: transformers' own typing of .to/.eval trips mypy.
        torch.nn.Module.to(model, self.device, self.dtype)
        torch.nn.Module.eval(model)
        self.model: CLIPModel = model
        projection_dim = model.config.projection_dim
        if projection_dim is None:
            raise ValueError(f"{model_name_or_path}: CLIP config has no projection_dim")
        self.dim: int = int(projection_dim)
        self.input_size: int = self._preprocessing.crop_height  # what decode_image can aim for
        self._lock = threading.Lock()  # one forward at a time; torch already uses every core
        # Seconds the last embed() spent in each stage, for the bot's per-stage timings.
        self.last_stage_seconds: dict[str, float] = {}

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """CLIP's preprocessing as a (n, 3, H, W) float32 batch on the CPU.

        Resize the shorter side to the crop size (bicubic), center crop, rescale to [0, 1],
        normalise with the processor's mean and std.
        """
        settings = self._preprocessing
        if not images:
            return torch.empty((0, 3, settings.crop_height, settings.crop_width))
        arrays = [settings.resize_and_crop(im) for im in images]
        # numpy, not torch: on a busy 2-core CPU torch's small elementwise ops cost ~20x more.
        batch = np.stack(arrays).transpose(0, 3, 1, 2).astype(np.float32, order="C")
        batch *= settings.scale
        batch -= settings.shift
        return torch.from_numpy(batch)

    def embed(self, images: Sequence[Image.Image], batch_size: int = 32) -> npt.NDArray[np.float32]:
        """Embed ``images`` as an (n, dim) float32 array of unit-length rows."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        chunks: list[npt.NDArray[np.float32]] = []
        with self._lock, torch.inference_mode():
            preprocess = forward = 0.0
            for start in range(0, len(images), batch_size):
                started = time.perf_counter()
                pixels = self.preprocess(images[start : start + batch_size])
                pixels = pixels.to(self.device, self.dtype)
                preprocessed = time.perf_counter()
                chunks.append(self._embed_pixels(pixels))
                forward += time.perf_counter() - preprocessed
                preprocess += preprocessed - started
            self.last_stage_seconds = {"preprocess": preprocess, "forward": forward}
        if not chunks:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(chunks)

    def _embed_pixels(self, pixels: torch.Tensor) -> npt.NDArray[np.float32]:
        # vision_model + visual_projection directly: get_image_features' return type changed
        # in transformers 5, and this is all it does for CLIP.
        outputs = self.model.vision_model(pixel_values=pixels)
        pooled = outputs.pooler_output if hasattr(outputs, "pooler_output") else outputs[1]
        features = self.model.visual_projection(pooled).float()
        features = torch.nn.functional.normalize(features, dim=-1)
        result: npt.NDArray[np.float32] = features.cpu().numpy().astype(np.float32, copy=False)
        return result


class _PreprocessSettings:
    """The few numbers from a CLIP image processor that preprocessing needs."""

    def __init__(
        self,
        *,
        shortest_edge: int | None,
        resize_hw: tuple[int, int] | None,
        crop_hw: tuple[int, int],
        resample: Image.Resampling,
        rescale_factor: float,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.shortest_edge = shortest_edge
        self.resize_hw = resize_hw
        self.crop_height, self.crop_width = crop_hw
        self.resample = resample
        self.rescale_factor = rescale_factor
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        std_ = np.asarray(self.std, dtype=np.float32).reshape(1, 3, 1, 1)
        mean_ = np.asarray(self.mean, dtype=np.float32).reshape(1, 3, 1, 1)
        # (x * rescale - mean) / std  ==  x * scale - shift: one multiply, one subtract
        self.scale = np.float32(rescale_factor) / std_
        self.shift = mean_ / std_

    @classmethod
    def from_processor(cls, processor: Any) -> _PreprocessSettings:
        if not (processor.do_resize and processor.do_center_crop):
            raise ValueError("CLIP preprocessing must resize and center crop")
        size, crop = processor.size, processor.crop_size
        shortest_edge = int(size.shortest_edge) if size.shortest_edge else None
        resize_hw = None if shortest_edge else (int(size.height), int(size.width))
        rescale = float(processor.rescale_factor) if processor.do_rescale else 1.0
        mean, std = processor.image_mean, processor.image_std
        if not processor.do_normalize:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        return cls(
            shortest_edge=shortest_edge,
            resize_hw=resize_hw,
            crop_hw=(int(crop.height), int(crop.width)),
            resample=Image.Resampling(int(processor.resample)),
            rescale_factor=rescale,
            mean=mean,
            std=std,
        )

    def describe(self) -> str:
        return json.dumps(
            {
                "shortest_edge": self.shortest_edge,
                "resize_hw": self.resize_hw,
                "crop_hw": [self.crop_height, self.crop_width],
                "resample": int(self.resample),
                "rescale_factor": self.rescale_factor,
                "mean": self.mean,
                "std": self.std,
            },
            sort_keys=True,
        )

    def resize_and_crop(self, image: Image.Image) -> npt.NDArray[np.uint8]:
        """Resize and center crop one image; (H, W, 3) uint8."""
        im = to_rgb(image)
        width, height = im.size
        if self.shortest_edge is not None:
            # Same rounding as transformers' get_resize_output_image_size.
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
            new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        else:
            assert self.resize_hw is not None
            new_h, new_w = self.resize_hw
        if (new_w, new_h) != im.size:
            im = im.resize((new_w, new_h), resample=self.resample)
        # Pillow fills a crop box that reaches outside the image with black, as transformers'
        # center_crop pads with zeros; the offsets round the same way.
        top = (new_h - self.crop_height) // 2
        left = (new_w - self.crop_width) // 2
        im = im.crop((left, top, left + self.crop_width, top + self.crop_height))
        return np.asarray(im, dtype=np.uint8)


def _weights_digest(model: torch.nn.Module, *, extra: str) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, plus ``extra``."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
    digest.update(extra.encode())
    return digest.hexdigest()


def _short_name(model_name_or_path: str) -> str:
    """Hub id "openai/clip-vit-base-patch32" -> "clip-vit-base-patch32"; a directory -> its name."""
    name = Path(model_name_or_path.rstrip("/\\")).name or "clip"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)
