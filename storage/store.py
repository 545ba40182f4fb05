"""Every query Tastebot runs, grouped by what it stores, over one `Database`.

One connection and one transaction discipline (storage.db) under all of them: a store
method is one transaction, so a caller never holds one open across its own awaits.
"""

from __future__ import annotations

from pathlib import Path

from storage.db import Database
from storage.images import ImageStore
from storage.inbox import InboxStore
from storage.models import ModelStore
from storage.people import PeopleStore
from storage.runs import RunStore
from storage.submissions import SubmissionStore
from storage.telemetry import TelemetryStore
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
        self.inbox = InboxStore(db)
        self.telemetry = TelemetryStore(db)

    @classmethod
    async def open(cls, path: Path) -> Store:
        return cls(await Database.open(path))

    async def close(self) -> None:
        await self.db.close()
