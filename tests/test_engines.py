"""CLIP inference engines (learner/engines.py): choice, the conversion cache, fidelity."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from learner import engine_cache, engines
from learner.encoder import ClipImageEncoder
from learner.engines import EngineFailed
from testing.tiny_clip import build_tiny_clip

needs_openvino = pytest.mark.skipif(
    engines.openvino_missing() is not None,
    reason=f"OpenVINO tests need openvino: {engines.openvino_missing()}",
)
needs_nncf = pytest.mark.skipif(
    engines.openvino_missing() is not None or engines.nncf_missing() is not None,
    reason="int8 tests need openvino and nncf (pip install -e '.[openvino]')",
)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", seed=0)


@pytest.fixture(scope="module")
def reference(clip_dir: Path) -> ClipImageEncoder:
    return ClipImageEncoder(str(clip_dir), device="cpu", precision="fp32", engine="torch")


def some_images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in ((224, 224), (300, 500), (640, 360), (50, 70), (224, 224))
    ]


def load(clip_dir: Path, cache: Path | None, **kwargs: Any) -> ClipImageEncoder:
    options: dict[str, Any] = {"device": "cpu", "engine": "openvino", "precision": "fp32"}
    options.update(kwargs)
    return ClipImageEncoder(str(clip_dir), engine_cache=cache, **options)


@pytest.fixture(scope="module")
def pristine(clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache with the tiny CLIP converted (fp32); tests copy it rather than convert again."""
    if engines.openvino_missing():
        pytest.skip(f"OpenVINO tests need openvino: {engines.openvino_missing()}")
    cache = tmp_path_factory.mktemp("pristine")
    load(clip_dir, cache)
    return cache


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Another CLIP (other weights: another encoder version) and a cache with it converted."""
    if engines.openvino_missing():
        pytest.skip(f"OpenVINO tests need openvino: {engines.openvino_missing()}")
    root = tmp_path_factory.mktemp("other")
    model = build_tiny_clip(root / "model", seed=1)
    load(model, root / "cache")
    return model, root / "cache"


def copy_of(cache: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(cache, tmp_path / "cache"))


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The directories OpenVINO conversions were written to, in order."""
    written: list[Path] = []
    convert = engines._convert

    def counting(graph: Any, key: Any, out: Path, version: str) -> None:
        written.append(out)
        convert(graph, key, out, version)

    monkeypatch.setattr(engines, "_convert", counting)
    return written


# -- choice ----------------------------------------------------------------------------------


def test_torch_is_the_default_and_keeps_its_vision_tower(reference: ClipImageEncoder) -> None:
    assert reference.engine == "torch" and hasattr(reference.model, "vision_model")


@needs_openvino
def test_auto_takes_openvino_where_it_is_installed(
    clip_dir: Path, reference: ClipImageEncoder, tmp_path: Path
) -> None:
    auto = load(clip_dir, tmp_path, engine="auto", text_tower=False)
    assert auto.engine == "openvino" and auto.precision == "fp32"
    # The encoder's interface is the torch one's; the version does not depend on the engine.
    assert (auto.version, auto.dim, auto.input_size) == (
        reference.version,
        reference.dim,
        reference.input_size,
    )
    # One copy of the vision weights: the torch one is gone.
    assert not hasattr(auto.model, "vision_model")
    assert not hasattr(auto.model, "text_model")


def test_auto_falls_back_to_torch_when_openvino_is_missing(
    clip_dir: Path,
    reference: ClipImageEncoder,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(engines, "openvino_missing", lambda: "openvino is not installed (test)")
    with caplog.at_level(logging.WARNING, logger="learner.encoder"):
        auto = load(clip_dir, tmp_path, engine="auto")
    assert auto.engine == "torch" and "openvino is not installed" in auto.engine_reason
    assert [r for r in caplog.records if "openvino is not installed" in r.getMessage()]
    images = some_images()
    np.testing.assert_array_equal(auto.embed(images), reference.embed(images))
    with pytest.raises(EngineFailed, match="not installed"):
        load(clip_dir, tmp_path, engine="openvino")


@needs_openvino
def test_auto_falls_back_to_torch_when_openvino_disagrees(
    clip_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def broken(self: engines.OpenVinoVision, pixels: np.ndarray) -> np.ndarray:
        out = np.zeros((len(pixels), 16), np.float32)
        out[:, 0] = 1
        return out

    monkeypatch.setattr(engines.OpenVinoVision, "__call__", broken)
    auto = load(clip_dir, tmp_path, engine="auto")
    assert auto.engine == "torch" and "cosine" in auto.engine_reason
    assert hasattr(auto.model, "vision_model")
    with pytest.raises(EngineFailed, match="cosine"):
        load(clip_dir, tmp_path, engine="openvino")


def test_settings_that_cannot_work_are_refused(clip_dir: Path) -> None:
    with pytest.raises(ValueError, match="engine"):
        ClipImageEncoder(str(clip_dir), device="cpu", engine="onnx")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="int8"):
        ClipImageEncoder(str(clip_dir), device="cpu", engine="torch", precision="int8")
    with pytest.raises(ValueError, match="fp16"):
        ClipImageEncoder(str(clip_dir), device="cpu", engine="openvino", precision="fp16")
    # auto with a CUDA-only precision: torch, said so.
    auto = ClipImageEncoder(str(clip_dir), device="cpu", engine="auto", precision="fp16")
    assert auto.engine == "torch" and "fp16" in auto.engine_reason


# -- fidelity --------------------------------------------------------------------------------


def assert_close_to(
    encoder: ClipImageEncoder, reference: ClipImageEncoder, bound: float
) -> np.ndarray:
    images = some_images()
    got, want = encoder.embed(images), reference.embed(images)
    assert got.dtype == np.float32 and got.shape == want.shape == (len(images), 16)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert (got * want).sum(axis=1).min() >= bound
    # Tells the pictures apart as torch does: each one's nearest is itself.
    np.testing.assert_array_equal(np.argmax(got @ want.T, axis=1)[:4], np.arange(4))
    return got


@needs_openvino
def test_openvino_fp32_is_torch_fp32(
    clip_dir: Path, reference: ClipImageEncoder, tmp_path: Path
) -> None:
    encoder = load(clip_dir, tmp_path)
    assert_close_to(encoder, reference, 0.9999)
    # Batches, single images, prepared images and nothing at all, as the torch engine.
    images = some_images()
    together = encoder.embed(images, batch_size=32)
    alone = np.concatenate([encoder.embed([im]) for im in images])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    prepared = [encoder.prepare(im) for im in images]
    np.testing.assert_allclose(encoder.embed(prepared), together, atol=1e-6)
    empty = encoder.embed([])
    assert empty.shape == (0, 16) and empty.dtype == np.float32
    assert set(encoder.last_stage_seconds) == {"preprocess", "forward"}


@needs_openvino
def test_openvino_bf16_stays_close(
    clip_dir: Path, reference: ClipImageEncoder, tmp_path: Path
) -> None:
    encoder = load(clip_dir, tmp_path, precision="bf16")
    assert encoder.precision == "bf16"
    assert (tmp_path / reference.version / "openvino-fp16" / "manifest.json").is_file()
    assert_close_to(encoder, reference, 0.999)


@needs_nncf
def test_int8_is_opt_in_and_stays_close(
    clip_dir: Path, reference: ClipImageEncoder, tmp_path: Path
) -> None:
    auto = load(clip_dir, tmp_path, precision="auto")
    assert auto.precision in ("fp32", "bf16")  # never int8 unless asked for
    encoder = load(clip_dir, tmp_path, precision="int8")
    assert encoder.precision == "int8" and encoder.version == reference.version
    assert (tmp_path / reference.version / "openvino-int8" / "manifest.json").is_file()
    assert_close_to(encoder, reference, 0.999)


# -- the conversion cache --------------------------------------------------------------------


@needs_openvino
def test_conversion_is_cached_and_reused(
    clip_dir: Path, reference: ClipImageEncoder, tmp_path: Path, conversions: list[Path]
) -> None:
    first = load(clip_dir, tmp_path)
    directory = tmp_path / reference.version / "openvino-fp32"
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["encoder_version"] == reference.version and manifest["weights"] == "fp32"
    assert set(manifest["sha256"]) == {"model.xml", "model.bin"}
    assert len(conversions) == 1
    # Written beside its place, then moved there: no temporary directory is left behind.
    assert conversions[0].parent == directory.parent and conversions[0] != directory
    assert sorted(p.name for p in directory.parent.iterdir()) == ["openvino-fp32"]

    again = load(clip_dir, tmp_path)
    assert len(conversions) == 1
    images = some_images()
    np.testing.assert_array_equal(again.embed(images), first.embed(images))
    # bf16 runs from fp16 weights: a conversion of its own, beside the fp32 one.
    bf16 = load(clip_dir, tmp_path, precision="bf16")
    assert bf16.precision == "bf16" and len(conversions) == 2
    assert sorted(p.name for p in directory.parent.iterdir()) == [
        "openvino-fp16",
        "openvino-fp32",
    ]


@needs_openvino
def test_a_new_encoder_version_is_converted_again(
    clip_dir: Path,
    pristine: Path,
    other_model: tuple[Path, Path],
    tmp_path: Path,
    conversions: list[Path],
) -> None:
    cache = copy_of(pristine, tmp_path)
    first = load(clip_dir, cache)
    assert not conversions
    # A promoted fine-tune is another model directory with other weights: another version.
    other_dir = other_model[0]
    other = load(other_dir, cache)
    load(clip_dir, cache)  # and back: still cached
    assert other.version != first.version and len(conversions) == 1
    assert (tmp_path / "cache" / other.version / "openvino-fp32").is_dir()
    images = some_images()
    torch_other = ClipImageEncoder(str(other_dir), device="cpu")
    assert (other.embed(images) * torch_other.embed(images)).sum(axis=1).min() >= 0.9999


@needs_openvino
def test_what_a_killed_conversion_left_behind_is_removed(
    clip_dir: Path, reference: ClipImageEncoder, tmp_path: Path
) -> None:
    version_dir = tmp_path / reference.version
    old, recent = version_dir / ".openvino-fp32-killed", version_dir / ".openvino-fp32-running"
    for leftover in (old, recent):
        (leftover / "part").mkdir(parents=True)
    os.utime(old, (1_000_000, 1_000_000))
    load(clip_dir, tmp_path)
    # Another process may still be converting into a recent one: only the old one goes.
    assert not old.exists() and recent.exists()


@needs_openvino
def test_older_versions_caches_are_pruned(
    clip_dir: Path, reference: ClipImageEncoder, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    for age, name in enumerate(["older@000000000001", "newer@000000000002"]):
        (cache / name / "openvino-fp32").mkdir(parents=True)
        manifest = cache / name / "openvino-fp32" / "manifest.json"
        manifest.write_text("{}")
        os.utime(manifest, (1_000_000 + age, 1_000_000 + age))
    load(clip_dir, cache)
    kept = sorted(p.name for p in cache.iterdir())
    assert kept == sorted([reference.version, "newer@000000000002"])  # the newest two


def stale_manifest(directory: Path) -> None:
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["encoder_version"] = "tiny-clip@000000000000"
    (directory / "manifest.json").write_text(json.dumps(manifest))


def corrupt_weights(directory: Path) -> None:
    data = bytearray((directory / "model.bin").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    (directory / "model.bin").write_bytes(bytes(data))


def truncated_xml(directory: Path) -> None:
    xml = directory / "model.xml"
    xml.write_text(xml.read_text()[:100])


def garbled_manifest(directory: Path) -> None:
    (directory / "manifest.json").write_text("{not json")


def missing_weights(directory: Path) -> None:
    (directory / "model.bin").unlink()


OTHER_CACHE: list[Path] = []  # set by the test: where the other model's conversion is


def other_versions_model(directory: Path) -> None:
    """The files of another model under a manifest that names this one, hashes and all:
    only the comparison with torch can tell."""
    [converted] = OTHER_CACHE[0].glob("*/openvino-fp32")
    manifest = json.loads((directory / "manifest.json").read_text())
    for name in ("model.xml", "model.bin"):
        shutil.copyfile(converted / name, directory / name)
        manifest["sha256"][name] = engine_cache.file_sha256(directory / name)
    (directory / "manifest.json").write_text(json.dumps(manifest))


@needs_openvino
@pytest.mark.parametrize(
    "damage",
    [
        stale_manifest,
        corrupt_weights,
        truncated_xml,
        garbled_manifest,
        missing_weights,
        other_versions_model,
    ],
)
def test_a_stale_or_corrupt_cache_is_rebuilt(
    damage: Any,
    clip_dir: Path,
    reference: ClipImageEncoder,
    pristine: Path,
    other_model: tuple[Path, Path],
    tmp_path: Path,
    conversions: list[Path],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "OTHER_CACHE", [other_model[1]])
    cache = copy_of(pristine, tmp_path)
    directory = cache / reference.version / "openvino-fp32"
    damage(directory)
    converted_before = len(conversions)
    with caplog.at_level(logging.WARNING, logger="learner.engines"):
        rebuilt = load(clip_dir, cache)
    assert len(conversions) == converted_before + 1
    assert [r for r in caplog.records if "converting again" in r.getMessage()]
    assert rebuilt.engine == "openvino"
    assert_close_to(rebuilt, reference, 0.9999)
    assert engine_cache.invalid(directory, _key(reference, "fp32"), _ov_version()) is None
    assert sorted(p.name for p in directory.parent.iterdir()) == ["openvino-fp32"]


@needs_openvino
def test_a_large_model_is_converted_in_a_child_process(
    clip_dir: Path,
    reference: ClipImageEncoder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    conversions: list[Path],
) -> None:
    monkeypatch.setattr(engines, "CONVERT_IN_CHILD_ABOVE", 0)  # the tiny model counts as large
    encoder = load(clip_dir, tmp_path)
    assert not conversions  # not converted in this process
    assert (tmp_path / reference.version / "openvino-fp32" / "manifest.json").is_file()
    assert_close_to(encoder, reference, 0.9999)


@needs_openvino
def test_a_failed_child_conversion_is_done_here(
    clip_dir: Path,
    reference: ClipImageEncoder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    conversions: list[Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(engines, "CONVERT_IN_CHILD_ABOVE", 0)
    monkeypatch.setattr(
        engines.subprocess,
        "run",
        lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "MemoryError\n"),
    )
    with caplog.at_level(logging.WARNING, logger="learner.engines"):
        encoder = load(clip_dir, tmp_path)
    assert len(conversions) == 1
    assert [r for r in caplog.records if "MemoryError" in r.getMessage()]
    assert_close_to(encoder, reference, 0.9999)


@needs_openvino
def test_without_a_cache_directory_nothing_is_written(
    clip_dir: Path, reference: ClipImageEncoder, tmp_path: Path
) -> None:
    encoder = load(clip_dir, None)
    assert encoder.engine == "openvino"
    assert_close_to(encoder, reference, 0.9999)


def _key(encoder: ClipImageEncoder, weights: str) -> engine_cache.CacheKey:
    return engine_cache.CacheKey(encoder.version, weights, (224, 224), encoder.dim)


def _ov_version() -> str:
    import openvino

    return str(openvino.__version__)


@needs_openvino
def test_conversion_sends_no_telemetry(
    clip_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import openvino

    monkeypatch.delenv("CI", raising=False)
    seen: list[tuple[str | None, str | None]] = []
    convert = openvino.convert_model

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append((os.environ.get("CI"), os.environ.get("NNCF_CI")))
        return convert(*args, **kwargs)

    monkeypatch.setattr(openvino, "convert_model", recording)
    load(clip_dir, tmp_path)
    # OpenVINO's converter and NNCF stand down in CI; the setting does not outlive conversion.
    assert seen == [("true", "1")]
    assert "CI" not in os.environ
