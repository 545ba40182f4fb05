"""CLIP image encoder: PIL images in, L2-normalised float32 embeddings out.

Users load ``openai/clip-vit-base-patch32`` (downloaded once by transformers); tests load a tiny
random CLIP saved to a temporary directory. Both go through the same ``from_pretrained`` calls.

Nothing here needs torchvision: preprocessing is done with Pillow + numpy + torch, following the
settings of transformers' PIL CLIP image processor (``CLIPImageProcessorPil``), which the tests
check it against.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPModel

from learner.images import to_rgb


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
    ) -> None:
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)  # process-wide: torch has one intra-op pool
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

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
        torch.nn.Module.to(model, self.device)
        torch.nn.Module.eval(model)
        self.model: CLIPModel = model
        projection_dim = model.config.projection_dim
        if projection_dim is None:
            raise ValueError(f"{model_name_or_path}: CLIP config has no projection_dim")
        self.dim: int = int(projection_dim)
        self.input_size: int = self._preprocessing.crop_height  # what decode_image can aim for
        self._lock = threading.Lock()  # one forward at a time; torch already uses every core

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
            for start in range(0, len(images), batch_size):
                pixels = self.preprocess(images[start : start + batch_size]).to(self.device)
                chunks.append(self._embed_pixels(pixels))
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
