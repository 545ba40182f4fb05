"""Files under DATA_DIR: stored images and model files, always written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class DataDir:
    """Where everything durable lives; paths stored in SQLite are relative to `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def database(self) -> Path:
        return self.root / "tastebot.sqlite3"

    @property
    def faiss(self) -> Path:
        return self.root / "faiss"

    def image_relpath(self, sha256: str, image_format: str) -> str:
        # Two-level fan-out keeps directories small.
        return f"images/{sha256[:2]}/{sha256}.{image_format.lower()}"

    def heads_relpath(self, user_id: int) -> str:
        """The folder of a person's head files (forgetting them removes it whole)."""
        return f"models/heads/{user_id}"

    def head_relpath(self, user_id: int, version: int) -> str:
        return f"{self.heads_relpath(user_id)}/v{version}.npz"

    def path(self, relpath: str) -> Path:
        return self.root / relpath

    def save_image(self, sha256: str, image_format: str, data: bytes) -> str:
        rel = self.image_relpath(sha256, image_format)
        if not self.path(rel).exists():  # content-addressed: same name, same bytes
            write_atomic(self.path(rel), data)
        return rel
