"""A tiny random-weight CLIP, saved the way the hub stores ``openai/clip-vit-base-patch32``.

No model hub is reachable in tests or CI, so tests build this at run time and load it through
the very same ``from_pretrained(path)`` code users run with the real model id.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel


def tiny_clip_config(*, projection_dim: int = 16) -> CLIPConfig:
    """A CLIP small enough to build, save and run in milliseconds, with ViT-B/32's input shape."""
    return CLIPConfig(
        text_config={
            "vocab_size": 128,  # no tokenizer is saved; the text tower is not used yet
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "pad_token_id": 1,
            "bos_token_id": 126,  # inside the tiny vocabulary (real CLIP: 49406 / 49407)
            "eos_token_id": 127,
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


def build_clip(path: Path, config: CLIPConfig, *, seed: int = 0) -> Path:
    """Save a random-weight CLIPModel with ``config`` and CLIP's image processor to ``path``."""
    with torch.random.fork_rng(devices=[]):  # same weights for the same seed; global RNG untouched
        torch.manual_seed(seed)
        model = CLIPModel(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    # The PIL processor is what ClipImageEncoder loads; its defaults are openai's CLIP settings.
    CLIPImageProcessorPil().save_pretrained(path)
    return path


def build_tiny_clip(path: Path, *, seed: int = 0, projection_dim: int = 16) -> Path:
    """Build a tiny random CLIP in ``path``; ``ClipImageEncoder(str(path))`` loads it."""
    return build_clip(path, tiny_clip_config(projection_dim=projection_dim), seed=seed)
