"""People: who they are, what they have sent and voted, and forgetting them."""

from __future__ import annotations

import json
from typing import Any

from domain.outcomes import Person
from domain.records import (
    ForgetReport,
    Totals,
    User,
    UserCounts,
    UserSummary,
)
from storage.db import Database


class PeopleStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get_or_create_user(
        self,
        platform: str,
        platform_user_id: str,
        display_name: str | None = None,
        username: str | None = None,
    ) -> User:
        """The person's row, created on first sight. Read-only when nothing changed: this
        runs for every image and tap, and a write would cost a transaction (and an fsync)."""
        row = await self.db.fetch_one(
            "SELECT id, display_name, username FROM users"
            " WHERE platform = ? AND platform_user_id = ?",
            (platform, platform_user_id),
        )
        if row is not None and (row[1], row[2]) == (display_name, username):
            return User(int(row[0]), platform, platform_user_id)
        async with self.db.transaction() as conn:
            found = await conn.fetch_one(
                "INSERT INTO users (platform, platform_user_id, display_name, username)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (platform, platform_user_id)"
                " DO UPDATE SET display_name = excluded.display_name,"
                " username = excluded.username RETURNING id",
                (platform, platform_user_id, display_name, username),
            )
        assert found is not None
        return User(id=found["id"], platform=platform, platform_user_id=platform_user_id)

    async def user_of(self, person: Person) -> User:
        """The row of whoever sent or tapped (created on first sight)."""
        return await self.get_or_create_user(
            person.platform, person.platform_user_id, person.display_name, person.username
        )

    async def get_user(self, user_id: int) -> User | None:
        row = await self.db.fetch_one(
            "SELECT id, platform, platform_user_id FROM users WHERE id = ?", (user_id,)
        )
        if row is None:
            return None
        return User(row["id"], row["platform"], row["platform_user_id"])

    async def find_user(self, platform: str, reference: str) -> User | None:
        """A person by their platform user id, or by "@name" (their username, any case)."""
        if reference.startswith("@"):
            row = await self.db.fetch_one(
                "SELECT id, platform_user_id FROM users"
                " WHERE platform = ? AND lower(username) = lower(?) ORDER BY id DESC LIMIT 1",
                (platform, reference[1:]),
            )
        else:
            row = await self.db.fetch_one(
                "SELECT id, platform_user_id FROM users WHERE platform = ? AND platform_user_id = ?",
                (platform, reference),
            )
        return None if row is None else User(int(row[0]), platform, str(row[1]))

    async def user_counts(self, user_id: int) -> UserCounts:
        row = await self.db.fetch_one(
            "SELECT (SELECT COUNT(*) FROM submissions WHERE user_id = ?),"
            " (SELECT COUNT(*) FROM feedback WHERE user_id = ? AND vote = 'like'),"
            " (SELECT COUNT(*) FROM feedback WHERE user_id = ? AND vote = 'super_like'),"
            " (SELECT COUNT(*) FROM feedback WHERE user_id = ? AND vote = 'dislike')",
            (user_id,) * 4,
        )
        assert row is not None
        return UserCounts(images=row[0], likes=row[1], super_likes=row[2], dislikes=row[3])

    async def user_summaries(self) -> list[UserSummary]:
        rows = await self.db.fetch_all(
            "SELECT u.platform, u.platform_user_id,"
            " (SELECT COUNT(*) FROM feedback f WHERE f.user_id = u.id) AS votes,"
            " m.version, m.metrics_json"
            " FROM users u LEFT JOIN model_versions m"
            "  ON m.owner_user_id = u.id AND m.kind = 'head' AND m.status = 'active'"
            " ORDER BY u.id"
        )
        return [
            UserSummary(
                platform=r[0],
                platform_user_id=r[1],
                votes=int(r[2]),
                active_version=r[3],
                active_auc=None if r[4] is None else json.loads(r[4]).get("auc"),
            )
            for r in rows
        ]

    async def totals(self) -> Totals:
        row = await self.db.fetch_one(
            "SELECT (SELECT COUNT(*) FROM users), (SELECT COUNT(*) FROM images),"
            " (SELECT COUNT(*) FROM submissions), (SELECT COUNT(*) FROM feedback),"
            " (SELECT COUNT(*) FROM model_versions WHERE status = 'active')"
        )
        assert row is not None
        return Totals(*(int(v) for v in row))

    async def export_rows(self, user_id: int) -> list[dict[str, object]]:
        """Everything a person sent and said, one row per submission."""
        rows = await self.db.fetch_all(
            "SELECT i.sha256, s.caption, f.vote, s.score, m.version AS model_version,"
            " s.created_at AS submitted_at, f.updated_at AS voted_at"
            " FROM submissions s JOIN images i ON i.id = s.image_id"
            " LEFT JOIN feedback f ON f.submission_id = s.id AND f.user_id = s.user_id"
            " LEFT JOIN model_versions m ON m.id = s.model_version_id"
            " WHERE s.user_id = ? ORDER BY s.id",
            (user_id,),
        )
        return [dict(r) for r in rows]

    async def forget_user(self, user_id: int) -> ForgetReport:
        """Delete the person and everything of theirs, in one transaction. Images another
        person also sent stay (they are that person's too); other people's votes on this
        person's submissions (in a group) go with them. The caller deletes the files."""
        async with self.db.transaction(durable=True) as conn:

            async def scalar_list(sql: str) -> list[Any]:
                return [r[0] for r in await conn.fetch_all(sql, (user_id,))]

            model_files = await scalar_list(
                "SELECT file_path FROM model_versions WHERE owner_user_id = ?"
            )
            image_ids = await scalar_list(
                "SELECT DISTINCT image_id FROM submissions WHERE user_id = ?"
            )
            [submissions] = await scalar_list("SELECT COUNT(*) FROM submissions WHERE user_id = ?")
            [votes] = await scalar_list("SELECT COUNT(*) FROM feedback WHERE user_id = ?")
            rows = await conn.fetch_all(
                "SELECT DISTINCT f.user_id, s.image_id FROM feedback f"
                " JOIN submissions s ON s.id = f.submission_id"
                " WHERE s.user_id = ? AND f.user_id != ?",
                (user_id, user_id),
            )
            others_votes = [(int(r[0]), int(r[1])) for r in rows]
            await conn.execute("DELETE FROM users WHERE id = ?", (user_id,))  # cascades
            image_files: list[str] = []
            deleted_images = 0
            for image_id in image_ids:
                gone = await conn.fetch_one(
                    "DELETE FROM images WHERE id = ? AND NOT EXISTS"
                    " (SELECT 1 FROM submissions WHERE image_id = images.id) RETURNING file_path",
                    (image_id,),
                )
                if gone is not None:
                    deleted_images += 1
                    if gone[0]:
                        image_files.append(str(gone[0]))
        return ForgetReport(
            submissions=int(submissions),
            votes=int(votes),
            models=len(model_files),
            images=deleted_images,
            files=[str(f) for f in model_files] + image_files,
            others_votes=others_votes,
        )
