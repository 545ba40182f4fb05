"""DATABASE_URL: which backend, and where."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SQLITE_PREFIX = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql", "postgres")
EXAMPLE_SQLITE = "sqlite:///data/tastebot.sqlite3"
EXAMPLE_POSTGRES = "postgresql://user:password@host:5432/dbname"


@dataclass(frozen=True)
class DatabaseUrl:
    url: str
    path: Path | None  # the SQLite file; None for PostgreSQL

    @property
    def backend(self) -> str:
        return "sqlite" if self.path is not None else "postgresql"


def sqlite_url(path: Path) -> str:
    """``sqlite:///`` + the path as written: relative stays relative, absolute gets a 4th /."""
    return f"{SQLITE_PREFIX}{path}"


def parse_database_url(url: str) -> DatabaseUrl:
    """Raise ValueError, in one line that never repeats a password, for anything else."""
    url = url.strip()
    if url.startswith(SQLITE_PREFIX):
        path = url[len(SQLITE_PREFIX) :]
        if not path or path == ":memory:":
            raise ValueError(f"sqlite:/// needs a file path after it, e.g. {EXAMPLE_SQLITE}")
        return DatabaseUrl(url, Path(path))
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme in POSTGRES_SCHEMES:
        return DatabaseUrl(url, None)
    if scheme == "sqlite":
        raise ValueError(f"an SQLite URL has three slashes before its path, e.g. {EXAMPLE_SQLITE}")
    shown = f"scheme {scheme!r} is not supported" if scheme else "no scheme://"
    raise ValueError(f"{shown}: use {EXAMPLE_SQLITE} or {EXAMPLE_POSTGRES}")
