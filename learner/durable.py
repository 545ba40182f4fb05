"""fsync before a rename is trusted: model files must survive a power cut.

The bot commits a model's SQLite row right after writing its file. The file is synced first,
so a power cut can lose the newest row (the model is trained again) but never keep a row
that names a file it lost."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def fsync_directory(path: Path) -> None:
    """Make the entries of ``path`` (a rename into it) durable."""
    _fsync(path)


def fsync_tree(root: Path) -> None:
    """fsync every file under ``root``, then every directory, deepest first."""
    for directory, _, files in os.walk(root, topdown=False):
        for name in files:
            _fsync(Path(directory) / name)
        _fsync(Path(directory))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # a directory too, on POSIX
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_npz_atomically(path: Path, **arrays: Any) -> None:
    """``np.savez`` to a temporary file beside ``path``, synced, then renamed into place: a
    reader sees the old file or the whole new one, and a failed write leaves nothing."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
