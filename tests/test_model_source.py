"""A CLIP model that cannot be loaded is one clear, quick ModelUnavailable (learner/model_source.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bot.settings import Settings
from learner import model_source
from learner.encoder import ClipImageEncoder
from learner.model_source import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_CLIP_REVISION,
    ModelUnavailable,
    load_kwargs,
)
from testing.tiny_clip import build_tiny_clip

QUICK = 10.0  # seconds: generous on a busy machine; the hub's own retries take ~50 s


def raises_quickly(name: str, **kwargs: object) -> str:
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as error:
        ClipImageEncoder(name, device="cpu", **kwargs)  # type: ignore[arg-type]
    assert time.monotonic() - started < QUICK
    message = str(error.value)
    assert "\n" not in message and message.count(": ") >= 1
    return message


@pytest.mark.parametrize("name", ["/no/such/clip-dir", "./models/typo", "../clip", "~/nope/x"])
def test_a_missing_path_fails_at_once_with_what_to_do(name: str) -> None:
    message = raises_quickly(name)
    assert name in message and "does not exist" in message and "CLIP_MODEL" in message


def test_a_directory_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    message = raises_quickly(str(tmp_path / "empty"))
    assert "config.json" in message


def test_a_broken_model_directory(tmp_path: Path) -> None:
    model = build_tiny_clip(tmp_path / "clip", with_tokenizer=False)
    (model / "model.safetensors").write_bytes(b"not a safetensors file")
    message = raises_quickly(str(model))
    assert str(model) in message and "could not be loaded" in message


def test_a_hub_id_offline_and_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(model_source, "_in_hub_cache", lambda name, revision: False)
    message = raises_quickly("someone/clip-typo", revision="abc123")
    assert "someone/clip-typo" in message and "HF_HUB_OFFLINE" in message
    assert "local directory" in message


def test_a_hub_id_with_the_hub_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(model_source, "_in_hub_cache", lambda name, revision: False)
    monkeypatch.setattr(model_source, "_hub_unreachable", lambda: "Name or service not known")
    message = raises_quickly(DEFAULT_CLIP_MODEL)
    assert "cannot be reached" in message and "Name or service not known" in message


def test_a_cached_hub_id_loads_without_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_source, "_in_hub_cache", lambda name, revision: True)
    monkeypatch.setattr(model_source, "_hub_unreachable", lambda: pytest.fail("probed"))
    kwargs = load_kwargs(DEFAULT_CLIP_MODEL, DEFAULT_CLIP_REVISION)
    assert kwargs == {"revision": DEFAULT_CLIP_REVISION, "local_files_only": True}


def test_a_local_directory_never_uses_the_hub(tmp_path: Path) -> None:
    model = build_tiny_clip(tmp_path / "clip", with_tokenizer=False)
    assert load_kwargs(str(model), "some-revision") == {"local_files_only": True}


def test_the_revision_setting(tmp_path: Path) -> None:
    base = {"_env_file": None, "telegram_bot_token": "1:T", "data_dir": tmp_path}
    assert Settings(**base).clip_revision == DEFAULT_CLIP_REVISION  # type: ignore[arg-type]
    assert len(DEFAULT_CLIP_REVISION) == 40
    other = Settings(clip_model="someone/other-clip", **base)  # type: ignore[arg-type]
    assert other.clip_revision is None  # the default pin is the default model's
    pinned = Settings(clip_model="someone/other-clip", clip_revision="v2", **base)  # type: ignore[arg-type]
    assert pinned.clip_revision == "v2"
    # .env.example's empty line is unset; the default pin never follows another model.
    blank = Settings(clip_revision=" ", **base)  # type: ignore[arg-type]
    assert blank.clip_revision == DEFAULT_CLIP_REVISION
    moved = Settings(  # type: ignore[arg-type]
        clip_model="someone/other-clip", clip_revision=DEFAULT_CLIP_REVISION, **base
    )
    assert moved.clip_revision is None
    latest = Settings(clip_revision="main", **base)  # type: ignore[arg-type]
    assert latest.clip_revision == "main"
    defaults = Settings(**base)  # type: ignore[arg-type]
    assert (defaults.clip_engine, defaults.clip_precision) == ("auto", "auto")


def test_text_off_at_once_when_the_tokenizer_cannot_be_had(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from learner.text import ClipTextEncoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(model_source, "_in_hub_cache", lambda name, revision: False)
    started = time.monotonic()
    assert ClipTextEncoder.from_pretrained("someone/not-downloaded", revision="abc") is None
    assert time.monotonic() - started < QUICK
