"""The on-disk cache of converted OpenVINO models (see learner/engines.py for what is cached)::

    <cache>/<encoder version>/openvino-<weights>/model.xml, model.bin, manifest.json

A cache directory is written whole into a temporary directory and moved into place with
``os.replace`` (:func:`write_atomically`). It is trusted only if its manifest names this
encoder version, weights format and OpenVINO version and the files' sha256 match the manifest
(:func:`invalid`; learner/engines.py then checks what the compiled model embeds). Conversions
of all but the :data:`CACHES_KEPT` most recently used encoder versions are removed
(:func:`prune`), and so are temporary directories a killed conversion left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the layout or the converted graph changes: old caches rebuild
CACHES_KEPT = 2  # encoder versions whose conversions are kept (current + the one before)
FILES = ("model.xml", "model.bin")


@dataclass(frozen=True)
class CacheKey:
    encoder_version: str
    weights: str  # "fp32" or "int8"
    input_size: tuple[int, int]
    dim: int

    def manifest(self, openvino_version: str) -> dict[str, Any]:
        return {
            "format": CACHE_FORMAT,
            "encoder_version": self.encoder_version,
            "weights": self.weights,
            "openvino": openvino_version,
            "input_size": list(self.input_size),
            "dim": self.dim,
        }


def cache_directory(cache_root: Path, key: CacheKey) -> Path:
    """Where the conversion for ``key`` lives under ``cache_root``."""
    return cache_root / _safe(key.encoder_version) / f"openvino-{key.weights}"


def invalid(directory: Path, key: CacheKey, openvino_version: str) -> str | None:
    """Why the cache in ``directory`` cannot be used; None when its manifest and files check."""
    manifest_file = directory / "manifest.json"
    if not manifest_file.is_file():
        return "no manifest"
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, ValueError) as error:
        return f"unreadable manifest ({error})"
    if not isinstance(manifest, dict):
        return "unreadable manifest"
    expected = key.manifest(openvino_version)
    for field, value in expected.items():
        if manifest.get(field) != value:
            return f"manifest {field} is {manifest.get(field)!r}, expected {value!r}"
    hashes = manifest.get("sha256")
    if not isinstance(hashes, dict):
        return "manifest has no file hashes"
    for name in FILES:
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if file_sha256(path) != hashes.get(name):
            return f"{name} does not match its hash"
    return None


def write_atomically(directory: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` on a fresh temporary directory beside ``directory``, then put it in
    ``directory``'s place (the old one, if any, is removed first)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(directory.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        write(tmp)
        if directory.exists():
            stale = Path(tempfile.mkdtemp(prefix=f".stale-{directory.name}-", dir=directory.parent))
            os.replace(directory, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, directory)
        except OSError:
            # Another process put its conversion there first: theirs is checked on next load.
            if not directory.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


LEFTOVER_SECONDS = 3600  # a temporary directory this old is no conversion in progress


def _remove_leftovers(version_dir: Path) -> None:
    """Remove temporary directories that a process killed while converting left behind."""
    now = time.time()
    for leftover in version_dir.glob(".*"):
        with contextlib.suppress(OSError):
            if leftover.is_dir() and now - leftover.stat().st_mtime > LEFTOVER_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)


def prune(cache_root: Path, keep: Path) -> None:
    """Remove conversions of all but the :data:`CACHES_KEPT` most recently used encoder
    versions (a daily fine-tune would otherwise add ~350 MB a day)."""
    try:
        versions = [p for p in cache_root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return
    versions.sort(key=lambda p: (p == keep, _last_used(p)), reverse=True)
    for old in versions[CACHES_KEPT:]:
        log.info("removing the OpenVINO cache of an older encoder: %s", old)
        shutil.rmtree(old, ignore_errors=True)


def _last_used(version_dir: Path) -> float:
    times = [m.stat().st_mtime for m in version_dir.glob("*/manifest.json")]
    return max(times, default=0.0)


def touch(directory: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(directory / "manifest.json")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-@" else "-" for c in name)
