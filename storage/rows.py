"""SQL rows to domain records, and the SQL fragments several stores share."""

from __future__ import annotations

import json
import sqlite3

from domain.records import ModelVersion, NewModel, Submission
from storage.db import Database, Transaction

# A vote (feedback row f) changed since the newest head of its person, of any status: a
# rejected candidate also consumed the votes it was trained on.
NEW_VOTE = (
    "f.revision > IFNULL((SELECT MAX(m.trained_through) FROM model_versions m"
    " WHERE m.owner_user_id = f.user_id AND m.kind = 'head'), 0)"
)

SUBMISSION_COLUMNS = (
    "id, user_id, image_id, chat_id, message_id, score, model_version_id, reply_message_id"
)


def submission_from_row(row: sqlite3.Row) -> Submission:
    return Submission(
        id=row["id"],
        user_id=row["user_id"],
        image_id=row["image_id"],
        chat_id=row["chat_id"],
        message_id=row["message_id"],
        score=row["score"],
        model_version_id=row["model_version_id"],
        reply_message_id=row["reply_message_id"],
    )


def model_version_from_row(r: sqlite3.Row) -> ModelVersion:
    return ModelVersion(
        id=r["id"],
        owner_user_id=r["owner_user_id"],
        kind=r["kind"],
        version=r["version"],
        file_path=r["file_path"],
        encoder_version=r["encoder_version"],
        train_size=r["train_size"],
        holdout_size=r["holdout_size"],
        trained_through=r["trained_through"],
        status=r["status"],
        created_at=r["created_at"],
        metrics=json.loads(r["metrics_json"]),
    )


async def get_submission(db: Database, submission_id: int) -> Submission | None:
    row = await db.fetch_one(
        f"SELECT {SUBMISSION_COLUMNS} FROM submissions WHERE id = ?", (submission_id,)
    )
    return None if row is None else submission_from_row(row)


async def insert_model(conn: Transaction, model: NewModel, status: str) -> ModelVersion:
    async with conn.execute(
        "INSERT INTO model_versions (owner_user_id, kind, version, parent_id, file_path,"
        " encoder_version, train_size, holdout_size, metrics_json, trained_through, status)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
        (
            model.owner_user_id,
            model.kind,
            model.version,
            model.parent_id,
            model.file_path,
            model.encoder_version,
            model.train_size,
            model.holdout_size,
            json.dumps(model.metrics),
            model.trained_through,
            status,
        ),
    ) as cur:
        row = await cur.fetchone()
    assert row is not None
    return model_version_from_row(row)
