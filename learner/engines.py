"""Inference engines for CLIP's vision tower: OpenVINO beside torch (its on-disk cache of
converted models is learner/engine_cache.py).

Why OpenVINO: an eager torch forward takes the GIL back between its ~1,500 operator calls, so
a busy event loop slows it several times over; OpenVINO runs the whole graph in C++ without
the GIL, and on the CPUs measured here it is also faster than torch in fp32 and in bf16
(README "Speed"). Fine-tuning stays in torch: only inference runs here.

What is converted: pixels -> vision tower -> projection -> L2 normalisation, one graph, with a
dynamic batch size. It is converted from the torch model the encoder loaded (so it has the
same weights and the same encoder version) once per encoder version, and cached::

    <cache>/<encoder version>/openvino-<weights>/model.xml, model.bin, manifest.json

``<weights>`` is ``fp32`` (to run in fp32), ``fp16`` (to run in bf16, on CPUs with native
bf16; half the file to map) or ``int8`` (NNCF weight-only compression, opt-in).
A cache directory is written whole into a temporary directory and moved into place with
``os.replace``. It is trusted only if its manifest names this encoder version, weights format
and OpenVINO version, the files' sha256 match the manifest (learner/engine_cache.py), and the
compiled model embeds a fixed probe batch within the precision's cosine bound of what torch
fp32 gave for it at conversion (kept in the manifest); anything else is deleted and converted
again.

Memory: OpenVINO maps model.bin and, on its first inference, repacks the weights for this
CPU; the mapped pages it no longer reads are then given back (:func:`release_file_pages`),
so one copy of the weights stays resident.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt
import torch
from torch.jit._trace import TracerWarning

from learner.engine_cache import (
    FILES,
    CacheKey,
    cache_directory,
    file_sha256,
    invalid,
    prune,
    touch,
    write_atomically,
)
from learner.memory import release_file_pages, release_pages

log = logging.getLogger(__name__)

Engine = Literal["auto", "torch", "openvino"]
ENGINES: tuple[str, ...] = get_args(Engine)
# Cosine to torch fp32 on the probe batch below which an engine is not used.
FIDELITY = {"fp32": 0.9999, "bf16": 0.999, "int8": 0.999}
# The weights on disk for each precision. bf16 runs from fp16 weights: the CPU plugin rounds
# them to bf16 anyway (fp16 keeps more of the mantissa than bf16), and mapping a half-size
# file keeps the peak at load ~180 MB lower for ViT-B/32.
WEIGHTS = {"fp32": "fp32", "bf16": "fp16", "int8": "int8"}


class EngineFailed(RuntimeError):
    """An engine cannot run this model here (not installed, conversion failed, or its output
    disagrees with torch's)."""


def openvino_missing() -> str | None:
    """Why OpenVINO cannot be used (one phrase), or None when it can be imported."""
    try:
        import openvino  # noqa: F401
    except ImportError as error:
        return f"openvino is not installed ({error.msg}; pip install -e '.[openvino]')"
    except Exception as error:  # a broken install: a shared library that does not load
        return f"openvino does not load ({type(error).__name__}: {error})"
    return None


# OpenVINO's model conversion and NNCF send anonymous usage telemetry by default unless a
# consent file says otherwise; both stand down in CI (their own checks of these variables).
# A bot that learns one person's taste sends nothing anywhere: conversions run with them set.
_NO_TELEMETRY = {"CI": "true", "NNCF_CI": "1"}


@contextlib.contextmanager
def no_telemetry() -> Iterator[None]:
    """Within: OpenVINO's converter and NNCF do not send usage telemetry (see above)."""
    saved = {name: os.environ.get(name) for name in _NO_TELEMETRY}
    os.environ.update(_NO_TELEMETRY)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def nncf_missing() -> str | None:
    try:
        with no_telemetry():  # NNCF decides at import time
            import nncf  # noqa: F401
    except ImportError as error:
        return f"nncf is not installed ({error.msg}; pip install -e '.[openvino]')"
    except Exception as error:
        return f"nncf does not load ({type(error).__name__}: {error})"
    return None


@functools.cache
def _core() -> Any:
    import openvino as ov

    return ov.Core()


@functools.cache
def openvino_has_bf16() -> bool:
    """True when OpenVINO's CPU plugin runs bf16 natively here (AVX-512 BF16 or AMX)."""
    return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_precision(precision: str) -> str:
    """CLIP_PRECISION for the OpenVINO engine: auto -> bf16 where native, else fp32; fp16 (a
    CUDA precision) is refused."""
    if precision == "auto":
        return "bf16" if openvino_has_bf16() else "fp32"
    if precision not in FIDELITY:
        raise EngineFailed(f"OpenVINO on the CPU runs fp32, bf16 or int8, not {precision}")
    return precision


class VisionGraph(torch.nn.Module):
    """What is converted: pixels -> L2-normalised image embeddings (CLIP's get_image_features
    plus normalisation)."""

    def __init__(self, vision_model: torch.nn.Module, projection: torch.nn.Module) -> None:
        super().__init__()
        self.vision_model = vision_model
        self.projection = projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        features = self.projection(pooled)
        return torch.nn.functional.normalize(features, dim=-1)


def probe_pixels(size: tuple[int, int], n: int = 2) -> npt.NDArray[np.float32]:
    """A fixed batch of normalised-pixel-like inputs for the sanity check."""
    rng = np.random.default_rng(20231123)
    return rng.standard_normal((n, 3, *size)).astype(np.float32)


class OpenVinoVision:
    """A compiled OpenVINO model of :class:`VisionGraph`: (n, 3, H, W) float32 pixels in,
    (n, dim) float32 unit rows out. ``__call__`` runs in C++ with the GIL released.

    One call at a time (the encoder holds its lock), as torch's forward: a second thread would
    only fight this one for the same cores.
    """

    def __init__(self, compiled: Any, precision: str, directory: Path) -> None:
        self.compiled = compiled
        self.precision = precision
        self.directory = directory
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        with self._lock:
            # infer() releases the GIL for the whole graph; the result is copied out before
            # the request is reused.
            result = self._request.infer({0: pixels}, share_inputs=True)
            out = np.array(result[0], dtype=np.float32, copy=True)
        # Normalised in the graph already; again in float32, as bf16 leaves ~1e-3 off unit length.
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


def load_openvino(
    cache_root: Path | None,
    key: CacheKey,
    graph: VisionGraph,
    precision: str,
    threads: int,
    source: ModelSource | None = None,
) -> OpenVinoVision:
    """The OpenVINO engine for ``graph`` at ``precision`` (fp32, bf16 or int8), from the cache
    under ``cache_root`` when a valid one is there, else converted (and cached, unless
    ``cache_root`` is None). :class:`EngineFailed` when it cannot be had, or when it embeds a
    probe batch further from torch fp32 than :data:`FIDELITY` allows: against ``graph`` run
    now when converting, against the embeddings torch gave at conversion (kept in the
    manifest) when loading a cached one, so that torch's weights need not be read again.

    ``source``: where ``graph``'s model came from; given, and the model is large
    (:data:`CONVERT_IN_CHILD_ABOVE`), the conversion runs in a child process, so that
    tracing and converting (~0.5 GB more for ViT-B/32) never raise this process's peak.
    If the child fails, it is converted here."""
    missing = openvino_missing() or (nncf_missing() if precision == "int8" else None)
    if missing:
        raise EngineFailed(missing)
    import openvino as ov

    version = str(ov.__version__)
    if cache_root is None:
        with tempfile.TemporaryDirectory(prefix="tastebot-openvino-") as tmp, no_telemetry():
            _convert(graph, key, Path(tmp), version)
            return _ready(Path(tmp), precision, threads)

    directory = cache_directory(cache_root, key)
    problem = invalid(directory, key, version)
    if problem is None:
        try:
            engine = _ready(directory, precision, threads)
            touch(directory)
            log.info("OpenVINO model for %s loaded from %s", key.encoder_version, directory)
            return engine
        except EngineFailed as error:
            problem = str(error)
        except Exception as error:  # a file OpenVINO cannot parse, for one
            problem = f"{type(error).__name__}: {error}"
    if directory.exists():
        log.warning("OpenVINO cache %s is not used (%s): converting again", directory, problem)
    started = time.perf_counter()
    write_atomically(directory, lambda tmp: _convert_somewhere(graph, key, tmp, version, source))
    log.info(
        "converted CLIP %s to OpenVINO (%s) in %.1f s: %s",
        key.encoder_version,
        key.weights,
        time.perf_counter() - started,
        directory,
    )
    engine = _ready(directory, precision, threads)
    prune(cache_root, keep=directory.parent)
    return engine


def _ready(directory: Path, precision: str, threads: int) -> OpenVinoVision:
    """Compile the model in ``directory``, check it against the torch embeddings in its
    manifest, and give back the pages of model.bin it no longer reads."""
    manifest = json.loads((directory / "manifest.json").read_text())
    probe = manifest.get("probe")
    if not isinstance(probe, dict) or not isinstance(probe.get("embeddings"), list):
        raise EngineFailed("the manifest has no probe embeddings")
    expected = np.asarray(probe["embeddings"], dtype=np.float32)
    engine = _compile(directory, precision, threads)
    # Compiling has copied most weights into the CPU plugin's own layouts; the first inference
    # repacks the rest (bf16, blocked layouts), reading again what it still needs.
    release_file_pages(directory / "model.bin")
    _check(engine, probe_pixels(tuple(manifest["input_size"])), expected, FIDELITY[precision])
    release_file_pages(directory / "model.bin")
    return engine


@dataclass(frozen=True)
class ModelSource:
    """What the encoder loaded, for a child process to load the same: its name or path, and
    the hub revision."""

    name: str
    revision: str | None


CONVERT_IN_CHILD_ABOVE = 20_000_000  # vision parameters; ViT-B/32 has 88M, the tests' 0.03M


def _convert_somewhere(
    graph: VisionGraph,
    key: CacheKey,
    out: Path,
    openvino_version: str,
    source: ModelSource | None,
) -> None:
    size = sum(p.numel() for p in graph.parameters())
    if source is not None and size > CONVERT_IN_CHILD_ABOVE:
        spec = {
            "name": source.name,
            "revision": source.revision,
            "key": dataclasses.asdict(key),
            "out": str(out),
        }
        child = subprocess.run(
            [sys.executable, "-m", "learner.engine_child", json.dumps(spec)],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, **_NO_TELEMETRY},
        )
        if child.returncode == 0 and (out / "manifest.json").is_file():
            return
        lines = (child.stderr or child.stdout or "").strip().splitlines()
        log.warning(
            "converting in a child process failed (exit %s: %s): converting here",
            child.returncode,
            lines[-1] if lines else "no output",
        )
        for leftover in out.iterdir():
            leftover.unlink()
    with no_telemetry():
        _convert(graph, key, out, openvino_version)


def _convert(graph: VisionGraph, key: CacheKey, out: Path, openvino_version: str) -> None:
    import openvino as ov

    probe = probe_pixels(key.input_size)
    with torch.inference_mode():
        expected = graph(torch.from_numpy(probe)).float().numpy()
    example = torch.from_numpy(probe[:1])
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # Tracing warns about Python branches on shapes: the input size is fixed, they hold.
        warnings.simplefilter("ignore", TracerWarning)
        model = ov.convert_model(
            graph,
            example_input=example,
            input=[ov.PartialShape([-1, 3, *key.input_size])],
        )
    if key.weights == "int8":
        import nncf

        # Weight-only int8 (per output channel, asymmetric): needs no calibration images.
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    # fp16 only for a bf16 engine (WEIGHTS): an fp32 one keeps fp32 weights, cosine 1.0 to torch.
    ov.save_model(model, out / "model.xml", compress_to_fp16=key.weights == "fp16")
    del model
    for tensor in graph.state_dict().values():  # torch's copy is not read again
        release_pages(tensor)
    manifest = key.manifest(openvino_version)
    manifest["sha256"] = {name: file_sha256(out / name) for name in FILES}
    manifest["probe"] = {"embeddings": expected.tolist()}  # torch fp32's, to check against
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _compile(directory: Path, precision: str, threads: int) -> OpenVinoVision:
    core = _core()
    hint = "f32" if precision == "fp32" else "bf16"
    if precision == "int8":  # int8 weights; activations as the CPU runs them best
        hint = "bf16" if openvino_has_bf16() else "f32"
    properties = {
        "INFERENCE_PRECISION_HINT": hint,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
        "INFERENCE_NUM_THREADS": str(max(1, threads)),
    }
    model = core.read_model(directory / "model.xml")
    compiled = core.compile_model(model, "CPU", properties)
    del model
    return OpenVinoVision(compiled, precision, directory)


def _check(
    engine: OpenVinoVision,
    probe: npt.NDArray[np.float32],
    expected: npt.NDArray[np.float32],
    bound: float,
) -> None:
    got = engine(probe)
    if got.shape != expected.shape or not np.isfinite(got).all():
        raise EngineFailed(f"OpenVINO gave {got.shape} (finite: {np.isfinite(got).all()})")
    cosine = float((got * expected).sum(axis=1).min())
    if not cosine >= bound:
        raise EngineFailed(
            f"OpenVINO ({engine.precision}) embeds the probe at cosine {cosine:.6f} to torch, "
            f"below {bound}"
        )
