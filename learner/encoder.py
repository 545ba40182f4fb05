"""CLIP image encoder: PIL images in, L2-normalised float32 embeddings out.

Users load ``openai/clip-vit-base-patch32`` (downloaded once by transformers); tests load a tiny
random CLIP saved to a temporary directory. Both go through the same ``from_pretrained`` calls.

Nothing here needs torchvision: preprocessing is done with Pillow + numpy + torch, following the
settings of transformers' PIL CLIP image processor (``CLIPImageProcessorPil``), which the tests
check it against (learner/preprocess.py).

Where the parts live: the precision and CPU threads in learner/compute.py, the packed bf16
linear layers in learner/packed_linear.py, hashing and casting the loaded weights in
learner/weights.py, the projection of a tower's output in learner/clip_features.py; names
other code imports from here are re-exported (``__all__``).

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

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPModel

from learner import engines
from learner.clip_features import project
from learner.compute import (
    DTYPES,
    ClipPrecision,
    Precision,
    cpu_has_native_bf16,
    default_torch_threads,
    resolve_precision,
    usable_cores,
)
from learner.engine_cache import CacheKey
from learner.engines import ENGINES, Engine, EngineFailed, OpenVinoVision
from learner.memory import trim_heap as _trim_heap
from learner.model_source import ModelUnavailable, load_kwargs, short_name, unavailable
from learner.packed_linear import PackedLinear, pack_linear_layers, pack_vision_tower
from learner.preprocess import PreparedImage, PreprocessSettings
from learner.weights import hash_and_cast, own_copies

# Names other code imports from here: the encoder's public interface, whichever module
# now defines them.
__all__ = [
    "ClipImageEncoder",
    "ClipPrecision",
    "PackedLinear",
    "Precision",
    "PreparedImage",
    "cpu_has_native_bf16",
    "default_torch_threads",
    "pack_linear_layers",
    "resolve_precision",
    "usable_cores",
]

log = logging.getLogger(__name__)


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
        self.dtype: torch.dtype = torch.float32 if wanted == "openvino" else DTYPES[self.precision]

        model = self._load(model_name_or_path, revision)
        self._hash_version(model, model_name_or_path, release=wanted == "openvino")
        if not text_tower:
            del model.text_model, model.text_projection
        torch.nn.Module.eval(model)

        self.engine: str = "torch"
        self._openvino: OpenVinoVision | None = None
        if wanted == "openvino":
            self._start_openvino(model, engine, precision, engine_cache, torch_threads)
        self._place(model)
        self._lock = threading.Lock()  # one forward at a time; torch already uses every core
        # Seconds the last embed() spent in each stage, for the bot's per-stage timings.
        self.last_stage_seconds: dict[str, float] = {}

    def _load(self, model_name_or_path: str, revision: str | None) -> CLIPModel:
        """Load the image processor and the float32 model (:class:`ModelUnavailable` if either
        cannot be had), and the preprocessing settings."""
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
        self._preprocessing = PreprocessSettings.from_processor(self.processor)
        return model

    def _hash_version(self, model: CLIPModel, model_name_or_path: str, *, release: bool) -> None:
        """``self.version`` from the weights and preprocessing (casting the weights to
        ``self.dtype`` as they are hashed), and the sizes read from the config.

        ``release``: give back the pages of float32 weights kept as they are (read again
        only if converted to OpenVINO)."""
        # Hash on the CPU, before moving: same weights + same preprocessing = same version.
        digest = hash_and_cast(
            model, self.dtype, extra=self._preprocessing.describe(), release=release
        )
        self.version: str = f"{short_name(model_name_or_path)}@{digest[:12]}"
        projection_dim = model.config.projection_dim
        if projection_dim is None:
            raise ValueError(f"{model_name_or_path}: CLIP config has no projection_dim")
        self.dim: int = int(projection_dim)
        self.input_size: int = self._preprocessing.crop_height  # what decode_image can aim for

    def _start_openvino(
        self,
        model: CLIPModel,
        engine: str,
        precision: str,
        engine_cache: Path | str | None,
        torch_threads: int | None,
    ) -> None:
        """Try the OpenVINO engine; on success drop torch's copy of the vision weights, else
        (with ``engine="auto"``) say why torch runs instead."""
        threads = torch_threads or default_torch_threads()
        try:
            self._openvino = self._load_openvino(model, precision, engine_cache, threads)
        except EngineFailed as error:
            if engine == "openvino":
                raise
            self.engine_reason = f"OpenVINO not used ({error}): torch {self.precision}"
            log.warning("CLIP engine: %s", self.engine_reason)
            return
        self.engine, self.precision = "openvino", self._openvino.precision
        if engine == "auto":
            self.engine_reason = "CLIP_ENGINE=auto: OpenVINO is installed and agrees with torch"
        # One copy of the vision weights: OpenVINO has its own now.
        del model.vision_model, model.visual_projection
        own_copies(model)

    def _place(self, model: CLIPModel) -> None:
        """Cast (if OpenVINO was tried in fp32 and not taken) and move the model, pack a bf16
        vision tower on the CPU, and give back the memory of the copies let go."""
        if self._openvino is None and model.dtype != DTYPES[self.precision]:
            self.dtype = DTYPES[self.precision]
        # In place, through nn.Module: transformers' own typing of .to/.eval trips mypy.
        torch.nn.Module.to(model, self.device, self.dtype)
        self.model: CLIPModel = model
        self.packed_layers = 0  # linear layers of the vision tower packed for oneDNN
        if self.engine == "torch" and self.device.type == "cpu" and self.dtype == torch.bfloat16:
            self.packed_layers = pack_vision_tower(model, self._preprocessing.crop_height)
        _trim_heap()  # the float32 and unpacked copies are gone: give their memory back

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
        key = CacheKey(
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
        features = project(outputs, self.model.visual_projection)
        result: npt.NDArray[np.float32] = features.cpu().numpy().astype(np.float32, copy=False)
        return result
