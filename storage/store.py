"""Every query Tastebot runs, grouped by what it stores, over one `Database`.

One database interface (storage.db) under all of them, SQLite or PostgreSQL: a store
method is one transaction, so a caller never holds one open across its own awaits.
"""

from __future__ import annotations

from pathlib import Path

from storage.connect import open_database
from storage.db import Database
from storage.images import ImageStore
from storage.inbox import InboxStore
from storage.jobs import JobStore
from storage.models import ModelStore
from storage.people import PeopleStore
from storage.runs import RunStore
from storage.sqlite_db import SqliteDatabase
from storage.submissions import SubmissionStore
from storage.telemetry import TelemetryStore
from storage.vote_stamps import VoteStampStore
from storage.votes import VoteStore


class Store:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.people = PeopleStore(db)
        self.images = ImageStore(db)
        self.submissions = SubmissionStore(db)
        self.votes = VoteStore(db)
        self.models = ModelStore(db)
        self.runs = RunStore(db)
        self.jobs = JobStore(db)
        self.stamps = VoteStampStore(db)
        self.inbox = InboxStore(db)
        self.telemetry = TelemetryStore(db)

    @classmethod
    async def open(cls, path: Path) -> Store:
        """The SQLite database in the file at ``path``."""
        return cls(await SqliteDatabase.open(path))

    @classmethod
    async def connect(cls, url: str) -> Store:
        """The database a DATABASE_URL names (sqlite:///… or postgresql://…)."""
        return cls(await open_database(url))

    async def close(self) -> None:
        await self.db.close()
