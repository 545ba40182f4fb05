"""A tiny random-weight CLIP, saved the way the hub stores ``openai/clip-vit-base-patch32``.

No model hub is reachable in tests or CI, so tests build this at run time and load it through
the very same ``from_pretrained(path)`` code users run with the real model id. The directory
also holds a real (if merge-less) CLIP tokenizer, so the text tower loads the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPTextConfig,
    CLIPTokenizer,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

# CLIP's special tokens: the tokenizer pads with end-of-text, and the text tower pools at the
# first end-of-text token (transformers' CLIPTextTransformer, for any eos_token_id other than 2).
START_OF_TEXT, END_OF_TEXT = "<|startoftext|>", "<|endoftext|>"
BYTE_TOKENS = 512  # 256 byte-level characters, each also with the end-of-word suffix
TINY_VOCAB_SIZE = BYTE_TOKENS + 2  # + start and end of text


def tiny_clip_config(*, projection_dim: int = 16) -> CLIPConfig:
    """A CLIP small enough to build, save and run in milliseconds, with ViT-B/32's input shape."""
    return CLIPConfig(
        text_config={
            # The tiny tokenizer's ids: bytes, then start and end of text last (as in real CLIP:
            # 49406 / 49407 of 49408). pad = end of text, as CLIPTokenizer pads.
            "vocab_size": TINY_VOCAB_SIZE,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "pad_token_id": TINY_VOCAB_SIZE - 1,
            "bos_token_id": TINY_VOCAB_SIZE - 2,
            "eos_token_id": TINY_VOCAB_SIZE - 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 224,  # same input as ViT-B/32, so preprocessing is the real one
            "patch_size": 32,
        },
        projection_dim=projection_dim,
    )


def vit_b32_config() -> CLIPConfig:
    """ViT-B/32's shape (openai/clip-vit-base-patch32), for benchmarks with random weights."""
    return CLIPConfig(
        text_config={
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_hidden_layers": 12,
            "num_attention_heads": 8,
        },
        vision_config={
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 224,
            "patch_size": 32,
        },
        projection_dim=512,
    )


def build_clip(
    path: Path, config: CLIPConfig, *, seed: int = 0, with_tokenizer: bool = True
) -> Path:
    """Save a random-weight CLIPModel with ``config`` and CLIP's image processor to ``path``.

    ``with_tokenizer``: also save a byte-level CLIP tokenizer (:func:`save_byte_tokenizer`), so
    ``ClipTextEncoder.from_pretrained(path)`` works; False = a directory without one.
    """
    text = config.text_config
    if not isinstance(text, CLIPTextConfig):
        raise TypeError("CLIPConfig.text_config should be a CLIPTextConfig")
    # The tokenizer's ids must be the ones the text tower embeds and pools at.
    if with_tokenizer and (text.bos_token_id, text.eos_token_id) != (
        text.vocab_size - 2,
        text.vocab_size - 1,
    ):
        raise ValueError("the byte tokenizer puts start/end of text at the vocabulary's end")
    with torch.random.fork_rng(devices=[]):  # same weights for the same seed; global RNG untouched
        torch.manual_seed(seed)
        model = CLIPModel(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    # The PIL processor is what ClipImageEncoder loads; its defaults are openai's CLIP settings.
    CLIPImageProcessorPil().save_pretrained(path)
    if with_tokenizer:
        save_byte_tokenizer(
            path, vocab_size=int(text.vocab_size), max_length=int(text.max_position_embeddings)
        )
    return path


def save_byte_tokenizer(
    path: Path, *, vocab_size: int = TINY_VOCAB_SIZE, max_length: int = 77
) -> Path:
    """Save a real CLIPTokenizer with no merges: every byte is a token of its own.

    The files are the hub's (vocab.json, merges.txt, plus the tokenizer.json and
    tokenizer_config.json that ``save_pretrained`` writes). The vocabulary is CLIP's first 512
    entries (the byte-level characters of ``bytes_to_unicode``, then the same with ``</w>``),
    unused filler up to ``vocab_size - 2``, then start and end of text at ``vocab_size - 2``
    and ``vocab_size - 1``, where real CLIP has them. Needs neither ftfy nor the hub.
    """
    if vocab_size < TINY_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be at least {TINY_VOCAB_SIZE}, got {vocab_size}")
    chars: list[str] = list(bytes_to_unicode().values())  # type: ignore[no-untyped-call]
    vocab = {char: i for i, char in enumerate(chars)}
    vocab.update({f"{char}</w>": len(chars) + i for i, char in enumerate(chars)})
    # Never produced: with no merges, BPE only ever emits single characters.
    vocab.update({f"<|unused{i}|>": i for i in range(BYTE_TOKENS, vocab_size - 2)})
    vocab[START_OF_TEXT], vocab[END_OF_TEXT] = vocab_size - 2, vocab_size - 1
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_clip(
    path: Path, *, seed: int = 0, projection_dim: int = 16, with_tokenizer: bool = True
) -> Path:
    """Build a tiny random CLIP in ``path``; ``ClipImageEncoder(str(path))`` loads it, and
    ``ClipTextEncoder.from_pretrained(str(path))`` too unless ``with_tokenizer`` is False."""
    return build_clip(
        path,
        tiny_clip_config(projection_dim=projection_dim),
        seed=seed,
        with_tokenizer=with_tokenizer,
    )
