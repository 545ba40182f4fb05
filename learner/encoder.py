"""CLIP image encoder: PIL images in, L2-normalised float32 embeddings out.

Users load ``openai/clip-vit-base-patch32`` (downloaded once by transformers); tests load a tiny
random CLIP saved to a temporary directory. Both go through the same ``from_pretrained`` calls.

Nothing here needs torchvision: preprocessing is done with Pillow + numpy + torch, following the
settings of transformers' PIL CLIP image processor (``CLIPImageProcessorPil``), which the tests
check it against.

Precision: the vision tower can run in bfloat16 (CPUs with AVX-512 BF16 or AMX, and CUDA) or
float16 (CUDA). The weights are cast once at load time (``torch.autocast`` would re-cast every
weight on every forward: on ViT-B/32 that costs most of what bf16 saves for one image).
On a CPU in bf16 the vision tower's linear layers also keep their weights pre-packed in
oneDNN's blocked layout (:class:`PackedLinear`): a plain bf16 linear re-lays out its weight on
every call, which for one image (50 tokens) costs about as much as the product itself.
Embeddings are always float32 and L2-normalised, and ``version`` is hashed from the float32
weights, so vectors from either precision are stored and compared as one encoder's
(bf16 embeddings are within cosine 0.999 of fp32; the tests check it).

Engines (``engine=``): "torch" runs the vision tower as loaded; "openvino" converts it once
per encoder version to an OpenVINO model cached under ``engine_cache`` (see learner/engines.py)
and frees the torch copy of the vision weights; "auto" takes OpenVINO where it is installed,
runs on this device and agrees with torch, else torch (with one log line saying why). The
encoder version is hashed from the weights before any of this, so it, and the stored
embeddings, do not depend on the engine. ``precision="int8"`` (opt-in) needs OpenVINO.

A model that cannot be loaded raises :class:`learner.model_source.ModelUnavailable` quickly,
with one sentence saying what to do (see learner/model_source.py).

Preprocessing can run apart from the forward pass: :meth:`ClipImageEncoder.prepare` turns one
image into the network's input on any thread (the bot calls it right after decoding, off the
CLIP thread), and :meth:`ClipImageEncoder.embed` takes images or prepared inputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPModel

from learner import engines
from learner.engines import ENGINES, Engine, EngineFailed, OpenVinoVision
from learner.images import to_rgb
from learner.memory import release_pages as _release_pages
from learner.memory import trim_heap as _trim_heap
from learner.model_source import ModelUnavailable, load_kwargs, unavailable

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16"]  # torch's
ClipPrecision = Literal["auto", "fp32", "bf16", "fp16", "int8"]  # CLIP_PRECISION: + int8 (OpenVINO)
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


@dataclass(frozen=True)
class PreparedImage:
    """An image resized, cropped and normalised for one encoder: (3, H, W) float32 pixels."""

    pixels: npt.NDArray[np.float32]


class PackedLinear(torch.nn.Module):
    """An inference-only ``nn.Linear`` whose weight is pre-packed for oneDNN (CPU, bf16).

    ``torch.nn.functional.linear`` in bf16 reorders the weight into oneDNN's blocked layout on
    every call; packing once at load time made a ViT-B/32 forward ~1.3x faster for one image
    and no slower in batches (an A/B of both in one process, README "Benchmarks"). The packed
    weight replaces the plain one, so this costs no memory.
    """

    def __init__(self, linear: torch.nn.Linear, rows_hint: int) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight, rows_hint)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
            x, self.packed_weight, self.bias, "none", [], ""
        )
        return out


def pack_linear_layers(module: torch.nn.Module, rows_hint: int) -> int:
    """Replace every bf16 ``nn.Linear`` under ``module`` by a :class:`PackedLinear`; returns how
    many. ``rows_hint``: the rows (tokens) a typical call multiplies, oneDNN's blocking hint."""
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear) and child.weight.dtype == torch.bfloat16:
                setattr(parent, name, PackedLinear(child, rows_hint))
                replaced += 1
    return replaced


def cpu_has_native_bf16() -> bool:
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity on Linux), at least one."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_torch_threads() -> int:
    """CPU threads for the forward pass when not set: every usable core but one, at least one.

    The spare core keeps the event loop, downloads and decoding of the next images going
    while a forward pass runs; on a busy 2-core machine one torch thread is also the faster
    one (OpenMP threads that wait for each other lose more than the second core gives).
    """
    return max(1, usable_cores() - 1)


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
        precision: ClipPrecision = "fp32",
        text_tower: bool = True,
        engine: Engine = "torch",
        engine_cache: Path | str | None = None,
        revision: str | None = None,
    ) -> None:
        """``torch_threads``: None leaves torch's setting alone, 0 = :func:`default_torch_threads`.

        ``precision`` defaults to fp32 (training code loads the encoder too); the bot passes
        its ``CLIP_PRECISION`` setting, "auto" by default. ``text_tower=False`` frees CLIP's
        text tower once the weights are hashed (a ViT-B/32's is 63M parameters) for a caller
        that never embeds text; ``self.model`` then has no ``text_model``.

        ``engine``: "torch" (default), "openvino" or "auto" (see the module's docstring);
        ``engine_cache``: the directory converted models are cached in (None: converted in a
        temporary directory on every load). With OpenVINO, ``self.model`` keeps no vision
        tower. ``revision``: the hub revision for a hub id (ignored for a local directory).
        """
        if precision not in get_args(ClipPrecision):
            raise ValueError(
                f"precision must be one of {get_args(ClipPrecision)}, got {precision!r}"
            )
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        if torch_threads is not None:
            # process-wide: torch has one intra-op pool
            torch.set_num_threads(torch_threads or default_torch_threads())
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        wanted = self._engine_to_try(engine, precision)
        torch_precision = "auto" if precision == "int8" else precision
        self.precision: str = resolve_precision(torch_precision, self.device)
        # The OpenVINO engine is converted from float32 weights: cast (if at all) after trying it.
        self.dtype: torch.dtype = torch.float32 if wanted == "openvino" else _DTYPES[self.precision]

        try:
            load = load_kwargs(model_name_or_path, revision)
            # The PIL processor, not CLIPImageProcessor: in transformers 5 that one needs
            # torchvision.
            self.processor: CLIPImageProcessorPil = CLIPImageProcessorPil.from_pretrained(
                model_name_or_path, **load
            )
            model = CLIPModel.from_pretrained(model_name_or_path, dtype=torch.float32, **load)
        except ModelUnavailable:
            raise
        except Exception as error:  # OSError, hub errors, a broken safetensors file, ...
            raise unavailable(model_name_or_path, revision, error) from error
        self.load_kwargs = load  # for loading the tokenizer the same way
        self._source = engines.ModelSource(model_name_or_path, revision)
        model.requires_grad_(False)
        self._preprocessing = _PreprocessSettings.from_processor(self.processor)
        # Hash on the CPU, before moving: same weights + same preprocessing = same version.
        digest = _hash_and_cast(
            model,
            self.dtype,
            extra=self._preprocessing.describe(),
            release=wanted == "openvino",  # read again only if converted
        )
        self.version: str = f"{_short_name(model_name_or_path)}@{digest[:12]}"
        if not text_tower:
            del model.text_model, model.text_projection
        projection_dim = model.config.projection_dim
        if projection_dim is None:
            raise ValueError(f"{model_name_or_path}: CLIP config has no projection_dim")
        self.dim: int = int(projection_dim)
        self.input_size: int = self._preprocessing.crop_height  # what decode_image can aim for
        torch.nn.Module.eval(model)

        self.engine: str = "torch"
        self._openvino: OpenVinoVision | None = None
        if wanted == "openvino":
            threads = torch_threads or default_torch_threads()
            try:
                self._openvino = self._load_openvino(model, precision, engine_cache, threads)
            except EngineFailed as error:
                if engine == "openvino":
                    raise
                self.engine_reason = f"OpenVINO not used ({error}): torch {self.precision}"
                log.warning("CLIP engine: %s", self.engine_reason)
        if self._openvino is not None:
            self.engine, self.precision = "openvino", self._openvino.precision
            if engine == "auto":
                self.engine_reason = "CLIP_ENGINE=auto: OpenVINO is installed and agrees with torch"
            # One copy of the vision weights: OpenVINO has its own now.
            del model.vision_model, model.visual_projection
            _own_copies(model)
        elif model.dtype != _DTYPES[self.precision]:  # OpenVINO was tried in fp32
            self.dtype = _DTYPES[self.precision]
        # In place, through nn.Module: transformers' own typing of .to/.eval trips mypy.
        torch.nn.Module.to(model, self.device, self.dtype)
        self.model: CLIPModel = model
        self.packed_layers = 0  # linear layers of the vision tower packed for oneDNN
        if self.engine == "torch" and self.device.type == "cpu" and self.dtype == torch.bfloat16:
            self.packed_layers = _pack_vision_tower(model, self._preprocessing.crop_height)
        _trim_heap()  # the float32 and unpacked copies are gone: give their memory back
        self._lock = threading.Lock()  # one forward at a time; torch already uses every core
        # Seconds the last embed() spent in each stage, for the bot's per-stage timings.
        self.last_stage_seconds: dict[str, float] = {}

    def _engine_to_try(self, engine: str, precision: str) -> str:
        """ "torch" or "openvino" (to be tried; "auto" falls back to torch if it fails), and
        ``self.engine_reason``: why, in a few words."""
        self.engine_reason = f"CLIP_ENGINE={engine}"
        if engine == "torch":
            if precision == "int8":
                raise ValueError("int8 runs on OpenVINO only: set the engine to openvino or auto")
            return "torch"
        if self.device.type != "cpu":
            if engine == "openvino":
                raise ValueError(f"the OpenVINO engine runs on the CPU, not on {self.device}")
            self.engine_reason = f"torch on {self.device.type} (OpenVINO runs on the CPU here)"
            return "torch"
        if precision == "fp16":
            if engine == "openvino":
                raise ValueError("OpenVINO runs fp32, bf16 or int8 on the CPU, not fp16")
            self.engine_reason = "torch for fp16 (OpenVINO runs fp32, bf16 or int8)"
            return "torch"
        missing = engines.openvino_missing() or (
            engines.nncf_missing() if precision == "int8" else None
        )
        if missing:
            if engine == "openvino":
                raise EngineFailed(missing)
            self.engine_reason = f"OpenVINO not used ({missing}): torch"
            log.warning("CLIP engine: %s", self.engine_reason)
            return "torch"
        return "openvino"

    def _load_openvino(
        self, model: CLIPModel, precision: str, cache: Path | str | None, threads: int
    ) -> OpenVinoVision:
        ov_precision = engines.openvino_precision(precision)
        key = engines.CacheKey(
            encoder_version=self.version,
            weights=engines.WEIGHTS[ov_precision],
            input_size=(self._preprocessing.crop_height, self._preprocessing.crop_width),
            dim=self.dim,
        )
        graph = engines.VisionGraph(model.vision_model, model.visual_projection)
        root = Path(cache) if cache is not None else None
        try:
            return engines.load_openvino(
                root, key, graph, ov_precision, threads, source=self._source
            )
        except EngineFailed:
            raise
        except Exception as error:  # conversion or compilation failed inside OpenVINO
            raise EngineFailed(f"{type(error).__name__}: {error}") from error

    def prepare(self, image: Image.Image) -> PreparedImage:
        """One image preprocessed for :meth:`embed`; thread-safe, so it can run while another
        thread runs a forward pass."""
        return PreparedImage(self.preprocess([image]).numpy()[0])

    def preprocess(self, images: Sequence[Image.Image | PreparedImage]) -> torch.Tensor:
        """CLIP's preprocessing as a (n, 3, H, W) float32 batch on the CPU.

        Resize the shorter side to the crop size (bicubic), center crop, rescale to [0, 1],
        normalise with the processor's mean and std. Prepared images are used as they are.
        """
        settings = self._preprocessing
        shape = (3, settings.crop_height, settings.crop_width)
        if not images:
            return torch.empty((0, *shape))
        batch = np.empty((len(images), *shape), dtype=np.float32)
        raw = [i for i, im in enumerate(images) if not isinstance(im, PreparedImage)]
        if raw:
            arrays = [settings.resize_and_crop(images[i]) for i in raw]  # type: ignore[arg-type]
            # numpy, not torch: on a busy 2-core CPU torch's small elementwise ops cost ~20x more.
            pixels = np.stack(arrays).transpose(0, 3, 1, 2).astype(np.float32, order="C")
            pixels *= settings.scale
            pixels -= settings.shift
            batch[raw] = pixels
        for i, im in enumerate(images):
            if isinstance(im, PreparedImage):
                if im.pixels.shape != shape:
                    raise ValueError(f"prepared image is {im.pixels.shape}, expected {shape}")
                batch[i] = im.pixels
        return torch.from_numpy(batch)

    def embed(
        self, images: Sequence[Image.Image | PreparedImage], batch_size: int = 32
    ) -> npt.NDArray[np.float32]:
        """Embed ``images`` as an (n, dim) float32 array of unit-length rows."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        chunks: list[npt.NDArray[np.float32]] = []
        with self._lock, torch.inference_mode():
            preprocess = forward = 0.0
            for start in range(0, len(images), batch_size):
                started = time.perf_counter()
                pixels = self.preprocess(images[start : start + batch_size])
                preprocessed = time.perf_counter()
                if self._openvino is not None:
                    chunks.append(self._openvino(pixels.numpy()))
                else:
                    pixels = pixels.to(self.device, self.dtype)
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


MAX_RESIZED_PIXELS = 16_000_000  # larger resizes (aspect > ~318:1) resize only the crop's region


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
        top = (new_h - self.crop_height) // 2
        left = (new_w - self.crop_width) // 2
        if new_w * new_h > MAX_RESIZED_PIXELS and top >= 0 and left >= 0:
            # A thin strip (a 1 x 60000 PNG is 318 bytes) would be resized to gigapixels only
            # for the centre crop to be kept: resize just the source region that crop covers.
            return np.asarray(self._crop_of_resize(im, new_w, new_h, left, top), dtype=np.uint8)
        if (new_w, new_h) != im.size:
            im = im.resize((new_w, new_h), resample=self.resample)
        # Pillow fills a crop box that reaches outside the image with black, as transformers'
        # center_crop pads with zeros; the offsets round the same way.
        im = im.crop((left, top, left + self.crop_width, top + self.crop_height))
        return np.asarray(im, dtype=np.uint8)

    def _crop_of_resize(
        self, im: Image.Image, new_w: int, new_h: int, left: int, top: int
    ) -> Image.Image:
        """im.resize((new_w, new_h)) cropped at (left, top), without the whole resize.

        Two one-axis passes, horizontal then vertical, as Pillow orders them when it enlarges
        (every strip thinner than the crop): the pixels of the whole resize to within 2/255.
        One resize with a box differs by up to 20/255 on tall strips. Where Pillow shrinks it
        passes vertically first, and up to 9/255 differ. The first pass reads only the rows
        that the second's filter reaches."""
        width, height = im.size
        sx, sy = width / new_w, height / new_h
        y0, y1 = top * sy, (top + self.crop_height) * sy
        reach = 3.0 * max(1.0, sy) + 1.0  # filter support (Lanczos's 3 at most), source rows
        r0, r1 = max(0, int(y0 - reach)), min(height, int(np.ceil(y1 + reach)))
        x_box = (left * sx, r0, (left + self.crop_width) * sx, r1)
        rows = im.resize((self.crop_width, r1 - r0), resample=self.resample, box=x_box)
        y_box = (0, y0 - r0, self.crop_width, y1 - r0)
        return rows.resize((self.crop_width, self.crop_height), resample=self.resample, box=y_box)


def _pack_vision_tower(model: CLIPModel, image_size: int) -> int:
    """Pack the vision tower's linear layers (see :class:`PackedLinear`); 0 where this torch
    cannot, or where packed and plain layers disagree (then nothing is changed)."""
    vision = model.vision_model
    tokens = int(vision.embeddings.num_positions)  # patches + class token: rows per image
    probe = torch.randn(
        (1, 3, image_size, image_size), generator=torch.Generator().manual_seed(0)
    ).to(torch.bfloat16)
    plain = [
        (parent, name, child)
        for parent in vision.modules()
        for name, child in parent.named_children()
        if isinstance(child, torch.nn.Linear)
    ]
    with torch.inference_mode():
        expected = vision(pixel_values=probe).pooler_output.float()
        try:
            packed = pack_linear_layers(vision, tokens)
            got = vision(pixel_values=probe).pooler_output.float()
            agree = float(torch.nn.functional.cosine_similarity(expected, got).min()) > 0.9999
        except (RuntimeError, AttributeError, NotImplementedError):  # no oneDNN in this build
            packed, agree = 0, False
    if not agree:
        for parent, name, child in plain:
            setattr(parent, name, child)
        return 0
    return packed


def _own_copies(model: torch.nn.Module) -> None:
    """Copy what is left of ``model`` (the text tower, logit_scale) out of the checkpoint file
    ``from_pretrained`` mapped: while one tensor points into the mapping, all of it (the
    freed vision tower's pages too, ~350 MB for ViT-B/32) stays mapped and may stay resident."""
    for module in model.modules():
        for param in module.parameters(recurse=False):
            param.data = param.data.clone()
        for name, buffer in list(module.named_buffers(recurse=False)):
            module._buffers[name] = buffer.clone()


def _hash_and_cast(
    model: torch.nn.Module, dtype: torch.dtype, *, extra: str, release: bool = False
) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes (as loaded, float32), plus
    ``extra``; each floating-point tensor is cast to ``dtype`` as soon as it is hashed, and the
    pages its float32 original was read from are released.

    ``from_pretrained`` maps the checkpoint file and reads it lazily. Hashing the whole model
    first and casting it after would keep every page of the float32 file resident beside the
    reduced copy: ~600 MB more at the peak for ViT-B/32 (bench/speed.py reports peak RSS).
    ``release``: release the pages of tensors that are not cast too (for another engine).
    """
    digest = hashlib.sha256()
    state = model.state_dict()  # float32 views: tied names hash the original weights too
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
        if not t.is_floating_point() or t.dtype == dtype:
            if release:  # another engine will hold the weights: torch's pages may go
                _release_pages(t)
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        if attr in owner._parameters:
            param = owner._parameters[attr]
            assert param is not None
            param.data = param.data.to(dtype)
        elif owner._buffers.get(attr) is not None:
            owner._buffers[attr] = t.to(dtype)
        _release_pages(t)
    digest.update(extra.encode())
    return digest.hexdigest()


def _short_name(model_name_or_path: str) -> str:
    """Hub id "openai/clip-vit-base-patch32" -> "clip-vit-base-patch32"; a directory -> its name."""
    name = Path(model_name_or_path.rstrip("/\\")).name or "clip"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)
