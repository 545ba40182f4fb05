"""ClipImageEncoder against a tiny random CLIP loaded from disk, as users load the real one."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil

from learner.encoder import ClipImageEncoder
from learner.images import decode_image
from testing.tiny_clip import build_tiny_clip

# The preprocessor_config.json that openai/clip-vit-base-patch32 ships (legacy int sizes).
HUB_PREPROCESSOR_CONFIG = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", seed=0)


@pytest.fixture(scope="module")
def encoder(clip_dir: Path) -> ClipImageEncoder:
    return ClipImageEncoder(str(clip_dir), device="cpu", precision="fp32")


def noise(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    values = np.random.default_rng(seed).integers(0, 256, (height, width, channels), np.uint8)
    return Image.fromarray(values.squeeze(-1) if channels == 1 else values, mode)


def some_images() -> list[Image.Image]:
    sizes = [(300, 500), (224, 224), (640, 360), (100, 50), (225, 1000), (1000, 225), (223, 223)]
    return [noise(w, h, seed) for seed, (w, h) in enumerate(sizes)]


def reference_pixels(clip_dir: Path, images: list[Image.Image]) -> torch.Tensor:
    processor = CLIPImageProcessorPil.from_pretrained(str(clip_dir))
    pixels = processor(images, return_tensors="pt")["pixel_values"]
    assert isinstance(pixels, torch.Tensor)
    return pixels


def test_loads_from_a_directory_with_dim_and_version(encoder: ClipImageEncoder) -> None:
    assert encoder.dim == 16
    assert encoder.input_size == 224
    name, digest = encoder.version.split("@")
    assert name == "tiny-clip" and len(digest) == 12 and int(digest, 16) >= 0
    assert not encoder.model.training
    assert all(not p.requires_grad for p in encoder.model.parameters())


def test_preprocess_matches_clip_image_processor(encoder: ClipImageEncoder, clip_dir: Path) -> None:
    images = some_images()
    ours = encoder.preprocess(images)
    theirs = reference_pixels(clip_dir, images)
    assert ours.shape == theirs.shape == (len(images), 3, 224, 224)
    assert ours.dtype == torch.float32
    assert (ours - theirs).abs().max().item() < 0.02


def test_preprocess_matches_for_other_modes(encoder: ClipImageEncoder, clip_dir: Path) -> None:
    images = [noise(260, 240, 1, "RGBA"), noise(240, 260, 2, "L"), noise(50, 40, 3).convert("P")]
    theirs = reference_pixels(clip_dir, images)
    assert (encoder.preprocess(images) - theirs).abs().max().item() < 0.02


def test_a_thin_strip_is_preprocessed_without_resizing_all_of_it(
    encoder: ClipImageEncoder, clip_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import learner.preprocess

    asked: list[tuple[int, int]] = []
    resize = Image.Image.resize

    def recorded(
        self: Image.Image, size: tuple[int, int], *args: object, **kw: object
    ) -> Image.Image:
        asked.append(tuple(size))  # type: ignore[arg-type]
        return resize(self, size, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Image.Image, "resize", recorded)
    strip = Image.new("RGB", (1, 60_000), "white")  # 318 bytes as a PNG
    pixels = encoder.preprocess([strip])
    assert pixels.shape == (1, 3, 224, 224)
    assert max(w * h for w, h in asked) <= 224 * 224  # not 224 x 13.4 million
    # The crop-region path gives the pixels the full resize would: forced on a smaller strip.
    monkeypatch.setattr(learner.preprocess, "MAX_RESIZED_PIXELS", 0)
    images = [noise(30, 700, 7), noise(900, 40, 8)]
    assert (encoder.preprocess(images) - reference_pixels(clip_dir, images)).abs().max() < 0.02


def test_preprocess_with_the_hub_config_format(tmp_path: Path) -> None:
    clip_dir = build_tiny_clip(tmp_path / "hub-style")
    (clip_dir / "preprocessor_config.json").write_text(json.dumps(HUB_PREPROCESSOR_CONFIG))
    encoder = ClipImageEncoder(str(clip_dir), device="cpu")
    images = [noise(400, 250, 5), noise(250, 400, 6)]
    theirs = reference_pixels(clip_dir, images)
    assert (encoder.preprocess(images) - theirs).abs().max().item() < 0.02


def test_embeddings_are_unit_float32_rows(encoder: ClipImageEncoder) -> None:
    images = some_images()
    embeddings = encoder.embed(images)
    assert embeddings.shape == (len(images), 16) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    # Different pictures, different vectors (a constant output would pass the checks above).
    similarity = embeddings @ embeddings.T
    assert similarity[~np.eye(len(images), dtype=bool)].max() < 0.9999


def test_embeddings_are_clips_image_embeds(encoder: ClipImageEncoder) -> None:
    images = some_images()[:3]
    with torch.inference_mode():
        outputs = encoder.model(
            input_ids=torch.tensor([[126, 5, 127]]), pixel_values=encoder.preprocess(images)
        )
    expected = torch.nn.functional.normalize(outputs.image_embeds, dim=-1).numpy()
    np.testing.assert_allclose(encoder.embed(images), expected, atol=1e-5)


def test_embed_is_deterministic(encoder: ClipImageEncoder) -> None:
    images = some_images()
    np.testing.assert_array_equal(encoder.embed(images), encoder.embed(images))


def test_batched_equals_one_at_a_time(encoder: ClipImageEncoder) -> None:
    images = some_images()
    together = encoder.embed(images, batch_size=32)
    alone = np.concatenate([encoder.embed([im]) for im in images])
    in_pairs = encoder.embed(images, batch_size=2)
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(together, in_pairs, atol=1e-5)


def test_embed_nothing(encoder: ClipImageEncoder) -> None:
    empty = encoder.embed([])
    assert empty.shape == (0, 16) and empty.dtype == np.float32
    with pytest.raises(ValueError):
        encoder.embed([noise(10, 10, 0)], batch_size=0)


def test_decoded_images_embed(encoder: ClipImageEncoder) -> None:
    buffer = io.BytesIO()
    noise(1280, 720, 9).save(buffer, "JPEG", quality=90)
    decoded = decode_image(buffer.getvalue(), target_size=encoder.input_size)
    assert encoder.embed([decoded.image]).shape == (1, 16)


def test_version_follows_the_weights(
    encoder: ClipImageEncoder, clip_dir: Path, tmp_path: Path
) -> None:
    same_dir_again = ClipImageEncoder(str(clip_dir), device="cpu")
    assert same_dir_again.version == encoder.version

    rebuilt_same_seed = build_tiny_clip(tmp_path / "tiny-clip", seed=0)
    assert ClipImageEncoder(str(rebuilt_same_seed)).version == encoder.version

    other_seed = ClipImageEncoder(str(build_tiny_clip(tmp_path / "other", seed=1)))
    assert other_seed.version.split("@")[1] != encoder.version.split("@")[1]
    images = some_images()[:2]
    assert not np.allclose(other_seed.embed(images), encoder.embed(images), atol=1e-3)


def test_version_follows_the_preprocessing(clip_dir: Path, tmp_path: Path) -> None:
    changed = build_tiny_clip(tmp_path / "tiny-clip", seed=0)
    config = json.loads((changed / "preprocessor_config.json").read_text())
    config["image_mean"] = [0.5, 0.5, 0.5]
    (changed / "preprocessor_config.json").write_text(json.dumps(config))
    original = ClipImageEncoder(str(clip_dir), device="cpu")
    assert ClipImageEncoder(str(changed), device="cpu").version != original.version


# -- precision -------------------------------------------------------------------------------


def test_precision_is_resolved_and_checked(clip_dir: Path) -> None:
    from learner.compute import cpu_has_native_bf16, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("fp16", cpu) == "fp16"  # asked for: kept
    with pytest.raises(ValueError):
        resolve_precision("int8", cpu)
    with pytest.raises(ValueError):
        ClipImageEncoder(str(clip_dir), device="cpu", precision="fp64")  # type: ignore[arg-type]


def test_bf16_embeddings_stay_close_to_fp32(encoder: ClipImageEncoder, clip_dir: Path) -> None:
    bf16 = ClipImageEncoder(str(clip_dir), device="cpu", precision="bf16")
    assert encoder.precision == "fp32" and bf16.precision == "bf16"
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    # Same weights, same encoder version: the stored vectors are interchangeable.
    assert bf16.version == encoder.version
    images = some_images()
    reduced, full = bf16.embed(images), encoder.embed(images)
    assert reduced.dtype == np.float32 and reduced.shape == full.shape
    np.testing.assert_allclose(np.linalg.norm(reduced, axis=1), 1.0, atol=1e-5)
    assert (reduced * full).sum(axis=1).min() > 0.999
    # Still tells images apart as fp32 does: nearest neighbours agree.
    np.testing.assert_array_equal(
        np.argsort(-(reduced @ full.T), axis=1)[:, 0], np.arange(len(images))
    )


def _native_bf16() -> bool:
    from learner.compute import cpu_has_native_bf16

    return torch.backends.mkldnn.is_available() and cpu_has_native_bf16()


# Packing needs oneDNN's bf16 kernels; elsewhere the encoder keeps plain layers (tested below).
needs_bf16 = pytest.mark.skipif(not _native_bf16(), reason="no oneDNN bf16 on this CPU")


@needs_bf16
def test_packed_linear_computes_the_plain_linear() -> None:
    from learner.packed_linear import PackedLinear

    torch.manual_seed(0)
    plain = torch.nn.Linear(64, 96).to(torch.bfloat16)
    packed = PackedLinear(plain, rows_hint=50)
    for shape in ((50, 64), (3, 50, 64), (1, 1, 64)):
        x = torch.randn(shape).to(torch.bfloat16)
        with torch.inference_mode():
            want, got = plain(x).float(), packed(x).float()
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0.02, atol=0.02)
    # The plain weight is not kept beside the packed one.
    assert not list(packed.parameters())


@needs_bf16
def test_bf16_on_cpu_packs_the_vision_tower(encoder: ClipImageEncoder, clip_dir: Path) -> None:
    from learner.packed_linear import PackedLinear

    bf16 = ClipImageEncoder(str(clip_dir), device="cpu", precision="bf16")
    packed = [m for m in bf16.model.vision_model.modules() if isinstance(m, PackedLinear)]
    plain = [m for m in bf16.model.vision_model.modules() if isinstance(m, torch.nn.Linear)]
    # 2 layers x (q, k, v, out, fc1, fc2) in the tiny CLIP; the fp32 encoder packs nothing.
    assert bf16.packed_layers == len(packed) == 12 and not plain
    assert encoder.packed_layers == 0
    images = some_images()
    assert (bf16.embed(images) * encoder.embed(images)).sum(axis=1).min() > 0.999


def test_packing_that_disagrees_is_undone(clip_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from learner import packed_linear

    monkeypatch.setattr(
        packed_linear.PackedLinear, "forward", lambda self, x: torch.zeros_like(x[..., :1])
    )
    bf16 = ClipImageEncoder(str(clip_dir), device="cpu", precision="bf16")
    assert bf16.packed_layers == 0
    vision = bf16.model.vision_model
    assert not any(isinstance(m, packed_linear.PackedLinear) for m in vision.modules())
    assert sum(isinstance(m, torch.nn.Linear) for m in vision.modules()) == 12


def test_without_the_text_tower_the_version_and_vectors_are_the_same(
    encoder: ClipImageEncoder, clip_dir: Path
) -> None:
    vision_only = ClipImageEncoder(str(clip_dir), device="cpu", text_tower=False)
    assert vision_only.version == encoder.version
    assert not hasattr(vision_only.model, "text_model")
    params = sum(p.numel() for p in vision_only.model.parameters())
    assert params < sum(p.numel() for p in encoder.model.parameters())
    images = some_images()[:3]
    np.testing.assert_array_equal(vision_only.embed(images), encoder.embed(images))


def test_prepared_images_embed_exactly_as_the_images(encoder: ClipImageEncoder) -> None:
    images = some_images()
    prepared = [encoder.prepare(im) for im in images]
    np.testing.assert_array_equal(encoder.preprocess(prepared), encoder.preprocess(images))
    mixed = [prepared[0], images[1], prepared[2]]
    np.testing.assert_array_equal(encoder.embed(mixed), encoder.embed(images[:3]))
    with pytest.raises(ValueError, match="prepared image"):
        encoder.embed([type(prepared[0])(np.zeros((3, 8, 8), np.float32))])


def test_stage_seconds_are_reported(encoder: ClipImageEncoder) -> None:
    encoder.embed(some_images()[:2])
    assert set(encoder.last_stage_seconds) == {"preprocess", "forward"}
    assert all(seconds >= 0 for seconds in encoder.last_stage_seconds.values())


def test_torch_threads_zero_picks_a_deliberate_default(clip_dir: Path) -> None:
    from learner.compute import default_torch_threads

    before = torch.get_num_threads()
    try:
        ClipImageEncoder(str(clip_dir), device="cpu", torch_threads=0)
        assert torch.get_num_threads() == default_torch_threads() >= 1
    finally:
        torch.set_num_threads(before)
