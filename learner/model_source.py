"""Where a CLIP model comes from, and one clear error when it cannot be had.

``CLIP_MODEL`` is either a local directory saved with ``save_pretrained`` or a hub id such as
``openai/clip-vit-base-patch32``. Left to itself, ``from_pretrained`` on a hub id with no
network retries for ~50 s and then raises an ``OSError`` that talks about "a directory
containing a preprocessor_config.json"; a mistyped path fails as an invalid repo id. Here:

- an existing directory loads with ``local_files_only`` (never touches the network);
- something that looks like a path but is not a directory fails at once;
- a hub id already in the local cache loads from it (``local_files_only``), at the pinned
  revision when one is given;
- a hub id not in the cache fails at once when ``HF_HUB_OFFLINE`` is set, or when the hub
  cannot be reached in one short try, instead of retrying.

Each failure is a :class:`ModelUnavailable` whose message is one sentence saying what to do.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
# The hub commit of openai/clip-vit-base-patch32 that users download (its "main" when pinned;
# the same hash other projects pin). A changed upstream model then cannot change the
# encoder behind the stored embeddings without anyone noticing.
DEFAULT_CLIP_REVISION = "3d74acf9a28c67741b2f4f2ea7635f0aaf6f0268"

HUB_PROBE_SECONDS = 3.0  # one connection attempt to the hub before a download is tried

_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


class ModelUnavailable(RuntimeError):
    """The CLIP model cannot be loaded; ``str(error)`` is one sentence saying what to do."""


def looks_like_path(name: str) -> bool:
    """True for what can only be a file system path, never a hub id."""
    return (
        name.startswith(("/", "./", "../", "~", "."))
        or "\\" in name
        or name.count("/") > 1
        or bool(re.match(r"^[A-Za-z]:", name))  # C:... on Windows
        or not _REPO_ID.match(name)
    )


def load_kwargs(name: str, revision: str | None = None) -> dict[str, Any]:
    """The ``from_pretrained`` keyword arguments that load ``name`` quickly, or
    :class:`ModelUnavailable` at once when it cannot be loaded.

    ``revision`` applies to hub ids only (a local directory has no revisions)."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelUnavailable(
                f"CLIP_MODEL {name!r} is a directory without a config.json: point it at a "
                "directory saved with save_pretrained, or at a hub id such as "
                f"{DEFAULT_CLIP_MODEL}"
            )
        return {"local_files_only": True}
    if looks_like_path(name):
        raise ModelUnavailable(
            f"CLIP_MODEL {name!r} does not exist: check the path (a directory saved with "
            f"save_pretrained), or use a hub id such as {DEFAULT_CLIP_MODEL}"
        )
    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    if _in_hub_cache(name, revision):
        return {**kwargs, "local_files_only": True}
    if _hub_offline():
        raise ModelUnavailable(
            f"CLIP model {name!r}{_at(revision)} is not in the local model cache and "
            "HF_HUB_OFFLINE is set: download it once while online, or set CLIP_MODEL to a "
            "local directory"
        )
    reason = _hub_unreachable()
    if reason:
        raise ModelUnavailable(
            f"CLIP model {name!r}{_at(revision)} is not in the local model cache and the model "
            f"hub cannot be reached ({reason}): check the name and the network, or set "
            "CLIP_MODEL to a local directory (works offline)"
        )
    return kwargs


def short_name(model_name_or_path: str) -> str:
    """Hub id "openai/clip-vit-base-patch32" -> "clip-vit-base-patch32"; a directory -> its name."""
    name = Path(model_name_or_path.rstrip("/\\")).name or "clip"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def unavailable(name: str, revision: str | None, error: BaseException) -> ModelUnavailable:
    """A :class:`ModelUnavailable` for an error ``from_pretrained`` raised on ``name``."""
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    where = "directory" if Path(name).expanduser().is_dir() else "model"
    return ModelUnavailable(
        f"CLIP {where} {name!r}{_at(revision)} could not be loaded ({detail[:200]}): check "
        "CLIP_MODEL (and CLIP_REVISION), or use a local directory saved with save_pretrained"
    )


def _at(revision: str | None) -> str:
    return f" at revision {revision}" if revision else ""


def _hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "") or os.environ.get("TRANSFORMERS_OFFLINE", "")
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _in_hub_cache(name: str, revision: str | None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return False
    try:
        found = try_to_load_from_cache(name, "config.json", revision=revision)
    except Exception:  # an odd id or cache layout: let the download path decide
        return False
    return isinstance(found, str)


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached in one short try; None when it can (or behind a proxy,
    which a direct connection cannot judge)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    try:
        from huggingface_hub import constants

        endpoint = str(constants.ENDPOINT)
    except ImportError:  # pragma: no cover
        return None
    url = urlparse(endpoint)
    host = url.hostname
    if not host:
        return None
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=HUB_PROBE_SECONDS):
            return None
    except OSError as error:
        return error.strerror or type(error).__name__
