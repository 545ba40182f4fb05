"""ClipTextEncoder and combine() against the tiny random CLIP and its byte-level tokenizer."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTokenizer

from learner.encoder import ClipImageEncoder
from learner.text import ClipTextEncoder, combine
from testing.tiny_clip import TINY_VOCAB_SIZE, build_tiny_clip, save_byte_tokenizer

CAPTIONS = ["a photo of a cat", "Anna, 27 · loves hiking", "", "🙂 ok", "a photo of a dog"]


@pytest.fixture(scope="module")
def text_encoder(clip_dir: Path) -> ClipTextEncoder:
    loaded = ClipTextEncoder.from_pretrained(str(clip_dir))
    assert loaded is not None
    return loaded


def unit(rows: np.ndarray) -> np.ndarray:
    normalised: np.ndarray = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
    return normalised


# -- the tiny tokenizer ----------------------------------------------------------------------


def test_tiny_clip_saves_a_real_clip_tokenizer_consistent_with_its_text_tower(
    clip_dir: Path, text_encoder: ClipTextEncoder
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(clip_dir))
    assert isinstance(tokenizer, CLIPTokenizer)
    assert isinstance(CLIPTokenizer.from_pretrained(str(clip_dir)), CLIPTokenizer)
    assert len(tokenizer) == TINY_VOCAB_SIZE
    config = text_encoder.model.config.text_config
    assert isinstance(config, CLIPTextConfig)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (
        config.bos_token_id,
        config.eos_token_id,
    )
    assert tokenizer.pad_token_id == config.eos_token_id  # CLIP pads with end of text
    ids = tokenizer("Hi!")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "<|startoftext|>",
        "h",
        "i</w>",
        "!</w>",
        "<|endoftext|>",
    ]
    assert max(tokenizer("ünïcode 😀 ✓")["input_ids"]) < TINY_VOCAB_SIZE  # bytes cover all text
    assert "ftfy" not in sys.modules  # transformers 5's CLIPTokenizer does without it


def test_byte_tokenizer_can_match_vit_b32s_vocabulary(tmp_path: Path) -> None:
    tokenizer = CLIPTokenizer.from_pretrained(str(save_byte_tokenizer(tmp_path, vocab_size=49408)))
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, len(tokenizer)) == (49406, 49407, 49408)


# -- ClipTextEncoder -------------------------------------------------------------------------


def test_embeddings_are_unit_float32_rows(text_encoder: ClipTextEncoder) -> None:
    embeddings = text_encoder.embed(CAPTIONS)
    assert embeddings.shape == (len(CAPTIONS), 16) and embeddings.dtype == np.float32
    assert text_encoder.dim == 16
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    similarity = embeddings @ embeddings.T
    assert similarity[~np.eye(len(CAPTIONS), dtype=bool)].max() < 0.9999  # texts differ
    np.testing.assert_array_equal(embeddings, text_encoder.embed(CAPTIONS))  # deterministic


def test_embeddings_are_clips_text_embeds(text_encoder: ClipTextEncoder, clip_dir: Path) -> None:
    """Same as CLIPModel's forward: pooled at the end-of-text token, projected, normalised."""
    tokenizer = CLIPTokenizer.from_pretrained(str(clip_dir))
    for caption in CAPTIONS:
        ids = torch.tensor([tokenizer(caption)["input_ids"]])
        with torch.inference_mode():
            outputs = text_encoder.model(input_ids=ids, pixel_values=torch.zeros(1, 3, 224, 224))
        expected = torch.nn.functional.normalize(outputs.text_embeds, dim=-1).numpy()
        np.testing.assert_allclose(text_encoder.embed([caption]), expected, atol=1e-5)


def test_padding_does_not_change_an_embedding(text_encoder: ClipTextEncoder) -> None:
    together = text_encoder.embed(CAPTIONS)
    alone = np.concatenate([text_encoder.embed([c]) for c in CAPTIONS])
    in_pairs = text_encoder.embed(CAPTIONS, batch_size=2)
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(together, in_pairs, atol=1e-5)


def test_long_texts_are_cut_at_clips_context(text_encoder: ClipTextEncoder) -> None:
    long = "word " * 200  # ~1000 byte tokens
    cut, longer = text_encoder.embed([long, long + " and then something else"])
    np.testing.assert_allclose(cut, longer, atol=1e-6)  # only the first 77 tokens count
    assert text_encoder.max_length == 77
    assert not np.allclose(cut, text_encoder.embed(["word"])[0], atol=1e-3)


def test_empty_inputs(text_encoder: ClipTextEncoder) -> None:
    assert text_encoder.embed([""]).shape == (1, 16)
    empty = text_encoder.embed([])
    assert empty.shape == (0, 16) and empty.dtype == np.float32
    with pytest.raises(TypeError):
        text_encoder.embed("a bare string is not a list of captions")
    with pytest.raises(ValueError):
        text_encoder.embed(["x"], batch_size=0)


def test_shares_the_image_encoders_model(
    clip_dir: Path, encoder: ClipImageEncoder, text_encoder: ClipTextEncoder
) -> None:
    shared = ClipTextEncoder.from_pretrained(str(clip_dir), model=encoder.model)
    assert shared is not None and shared.model is encoder.model  # weights loaded once
    assert shared.version == text_encoder.version
    np.testing.assert_allclose(shared.embed(CAPTIONS), text_encoder.embed(CAPTIONS), atol=1e-5)


def test_runs_in_a_bf16_image_encoders_dtype(clip_dir: Path, text_encoder: ClipTextEncoder) -> None:
    bf16 = ClipImageEncoder(str(clip_dir), device="cpu", precision="bf16")
    shared = ClipTextEncoder.from_pretrained(str(clip_dir), model=bf16.model)
    assert shared is not None and next(shared.model.parameters()).dtype == torch.bfloat16
    assert shared.version == text_encoder.version  # hashed as bf16 either way
    reduced, full = shared.embed(CAPTIONS), text_encoder.embed(CAPTIONS)
    assert reduced.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(reduced, axis=1), 1.0, atol=1e-5)
    assert (reduced * full).sum(axis=1).min() > 0.99


def test_without_tokenizer_files_text_is_off_and_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bare = build_tiny_clip(tmp_path / "no-tokenizer", with_tokenizer=False)
    with caplog.at_level(logging.WARNING, logger="learner.text"):
        assert ClipTextEncoder.from_pretrained(str(bare)) is None
        assert ClipTextEncoder.from_pretrained(str(bare)) is None
    warnings = [r for r in caplog.records if r.name == "learner.text"]
    assert len(warnings) == 1 and "no tokenizer" in warnings[0].getMessage()


def test_an_unloadable_tokenizer_turns_text_off(tmp_path: Path) -> None:
    broken = build_tiny_clip(tmp_path / "broken", with_tokenizer=False)
    (broken / "tokenizer.json").write_text("not json")
    assert ClipTextEncoder.from_pretrained(str(broken)) is None


def test_version_follows_text_weights(
    clip_dir: Path, text_encoder: ClipTextEncoder, tmp_path: Path
) -> None:
    name, digest = text_encoder.version.split("@")
    assert name == f"{clip_dir.name}-text" and len(digest) == 12
    other = ClipTextEncoder.from_pretrained(str(build_tiny_clip(tmp_path / "o", seed=1)))
    assert other is not None and other.version.split("@")[1] != digest


# -- combine ---------------------------------------------------------------------------------


def test_combine_without_text_is_the_image() -> None:
    image = unit(np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32))
    assert combine(image, None, 0.5) is image
    assert combine(image, image[::-1].copy(), 0.0) is image


def test_combine_is_the_normalised_weighted_sum() -> None:
    rng = np.random.default_rng(1)
    image = unit(rng.normal(size=(5, 8))).astype(np.float32)
    text = unit(rng.normal(size=(5, 8))).astype(np.float32)
    mixed = combine(image, text, 0.5)
    assert mixed.shape == (5, 8) and mixed.dtype == np.float32
    np.testing.assert_allclose(mixed, unit(image + 0.5 * text), atol=1e-6)
    np.testing.assert_allclose(combine(image[0], text[0], 0.5), mixed[0], atol=1e-6)  # (d,)
    np.testing.assert_allclose(combine(image, text[0], 2.0), unit(image + 2 * text[0]), atol=1e-6)


def test_a_zero_text_row_means_no_text_for_that_image() -> None:
    rng = np.random.default_rng(2)
    image = unit(rng.normal(size=(3, 8))).astype(np.float32)
    text = unit(rng.normal(size=(3, 8))).astype(np.float32)
    text[1] = 0.0
    np.testing.assert_allclose(combine(image, text, 1.0)[1], image[1], atol=1e-6)


def test_combine_rejects_bad_input() -> None:
    image = np.ones((2, 8), np.float32)
    with pytest.raises(ValueError):
        combine(image, np.ones((2, 4), np.float32), 1.0)
    with pytest.raises(ValueError):
        combine(image, image, -0.5)
    with pytest.raises(ValueError):
        combine(image, image, float("nan"))


def test_combine_with_real_embeddings(
    encoder: ClipImageEncoder, text_encoder: ClipTextEncoder
) -> None:
    from PIL import Image

    images = encoder.embed([Image.new("RGB", (64, 64), c) for c in ("red", "blue")])
    texts = text_encoder.embed(["red", "blue"])
    mixed = combine(images, texts, 1.0)
    assert mixed.shape == images.shape
    np.testing.assert_allclose(np.linalg.norm(mixed, axis=1), 1.0, atol=1e-5)
