"""fsync before a rename is trusted: model files must survive a power cut.

The bot commits a model's SQLite row (``synchronous = FULL``) right after writing its file;
without these, a power cut could keep the row and lose the file's contents."""

from __future__ import annotations

import os
from pathlib import Path


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
