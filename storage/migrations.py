"""Schema, as an ordered list of migrations applied by `PRAGMA user_version`.

Never edit a released migration: append a new one. Migration N brings the
database from user_version N-1 to N.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: the data model of DESIGN.md.
    """
    CREATE TABLE users (
        id               INTEGER PRIMARY KEY,
        platform         TEXT NOT NULL,
        platform_user_id TEXT NOT NULL,
        display_name     TEXT,
        created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        UNIQUE (platform, platform_user_id)
    );

    CREATE TABLE images (
        id          INTEGER PRIMARY KEY,
        sha256      TEXT NOT NULL UNIQUE,
        byte_size   INTEGER NOT NULL,
        width       INTEGER NOT NULL,
        height      INTEGER NOT NULL,
        format      TEXT NOT NULL,
        file_path   TEXT,  -- relative to DATA_DIR; NULL once the file is not retained
        created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );

    CREATE TABLE model_versions (
        id              INTEGER PRIMARY KEY,
        owner_user_id   INTEGER REFERENCES users (id) ON DELETE CASCADE,  -- NULL = global
        kind            TEXT NOT NULL CHECK (kind IN ('head', 'backbone')),
        version         INTEGER NOT NULL,
        parent_id       INTEGER REFERENCES model_versions (id) ON DELETE SET NULL,
        file_path       TEXT NOT NULL,
        encoder_version TEXT NOT NULL,
        train_size      INTEGER NOT NULL,
        holdout_size    INTEGER NOT NULL,
        metrics_json    TEXT NOT NULL,
        -- feedback.revision this model has seen up to: "new votes" are those above it
        trained_through INTEGER NOT NULL,
        status          TEXT NOT NULL
                        CHECK (status IN ('candidate', 'active', 'retired', 'rejected')),
        created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        UNIQUE (owner_user_id, kind, version)
    );
    -- at most one active model per owner and kind
    CREATE UNIQUE INDEX one_active_model
        ON model_versions (IFNULL(owner_user_id, -1), kind) WHERE status = 'active';

    CREATE TABLE submissions (
        id               INTEGER PRIMARY KEY,
        user_id          INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        image_id         INTEGER NOT NULL REFERENCES images (id),
        chat_id          TEXT NOT NULL,
        message_id       TEXT NOT NULL,
        caption          TEXT,
        score            REAL NOT NULL,
        model_version_id INTEGER REFERENCES model_versions (id) ON DELETE SET NULL,
        reply_message_id TEXT,  -- set once the reply is sent; a redelivered update with it set is not answered twice
        created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        UNIQUE (user_id, chat_id, message_id)
    );
    CREATE INDEX submissions_by_image ON submissions (image_id);

    CREATE TABLE embeddings (
        image_id        INTEGER NOT NULL REFERENCES images (id) ON DELETE CASCADE,
        encoder_version TEXT NOT NULL,
        kind            TEXT NOT NULL DEFAULT 'image',
        dim             INTEGER NOT NULL,
        vector          BLOB NOT NULL,  -- float32, L2-normalised, little-endian
        PRIMARY KEY (image_id, encoder_version, kind)
    );

    CREATE TABLE feedback (
        id            INTEGER PRIMARY KEY,
        user_id       INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        submission_id INTEGER NOT NULL REFERENCES submissions (id) ON DELETE CASCADE,
        vote          TEXT NOT NULL CHECK (vote IN ('dislike', 'like', 'super_like')),
        -- global, strictly increasing on every change: orders votes without trusting clocks
        revision      INTEGER NOT NULL,
        created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        updated_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        UNIQUE (user_id, submission_id)
    );
    CREATE INDEX feedback_by_user_revision ON feedback (user_id, revision);

    CREATE TABLE training_runs (
        id               INTEGER PRIMARY KEY,
        user_id          INTEGER REFERENCES users (id) ON DELETE CASCADE,
        kind             TEXT NOT NULL,
        trigger          TEXT NOT NULL,
        started_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        finished_at      TEXT,
        n_labels         INTEGER,
        outcome          TEXT NOT NULL DEFAULT 'running'
                         CHECK (outcome IN ('running', 'promoted', 'rejected', 'failed')),
        model_version_id INTEGER REFERENCES model_versions (id) ON DELETE SET NULL,
        detail           TEXT
    );
    """,
    # 2: text that goes with a submission (its caption, then text read from the image),
    # embedded with CLIP's text tower; keyed by the text encoder's version.
    """
    CREATE TABLE submission_texts (
        submission_id   INTEGER NOT NULL REFERENCES submissions (id) ON DELETE CASCADE,
        encoder_version TEXT NOT NULL,
        text            TEXT NOT NULL,
        vector          BLOB NOT NULL,  -- float32, L2-normalised
        PRIMARY KEY (submission_id, encoder_version)
    );
    """,
    # 3: the last feedback revision handed out. MAX(revision) + 1 gave a deleted newest vote's
    # number (/undo, /forget) to the next vote, which a model trained through that number
    # then never counted as new. Seeded past every number already used or trained through.
    """
    CREATE TABLE revision_counter (
        id    INTEGER PRIMARY KEY CHECK (id = 1),
        value INTEGER NOT NULL
    );
    INSERT INTO revision_counter (id, value) VALUES (1, MAX(
        (SELECT IFNULL(MAX(revision), 0) FROM feedback),
        (SELECT IFNULL(MAX(trained_through), 0) FROM model_versions)
    ));
    """,
    # 4: a person's @username (Telegram) or user name (Discord), so admins can name people
    # the bot has seen; looked up without regard to case, as the platforms do.
    """
    ALTER TABLE users ADD COLUMN username TEXT;
    CREATE INDEX users_by_username ON users (platform, lower(username));
    """,
    # 5: the crowd model (everyone's votes, one global model per encoder) is a model version
    # too. SQLite cannot change a CHECK, so the table is rebuilt as its ALTER TABLE page
    # says: foreign keys are off while migrations run (storage.db) and checked before COMMIT.
    """
    CREATE TABLE model_versions_new (
        id              INTEGER PRIMARY KEY,
        owner_user_id   INTEGER REFERENCES users (id) ON DELETE CASCADE,  -- NULL = global
        kind            TEXT NOT NULL CHECK (kind IN ('head', 'backbone', 'crowd')),
        version         INTEGER NOT NULL,
        parent_id       INTEGER REFERENCES model_versions (id) ON DELETE SET NULL,
        file_path       TEXT NOT NULL,
        encoder_version TEXT NOT NULL,
        train_size      INTEGER NOT NULL,
        holdout_size    INTEGER NOT NULL,
        metrics_json    TEXT NOT NULL,
        trained_through INTEGER NOT NULL,
        status          TEXT NOT NULL
                        CHECK (status IN ('candidate', 'active', 'retired', 'rejected')),
        created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        UNIQUE (owner_user_id, kind, version)
    );
    INSERT INTO model_versions_new SELECT * FROM model_versions;
    DROP TABLE model_versions;
    ALTER TABLE model_versions_new RENAME TO model_versions;
    CREATE UNIQUE INDEX one_active_model
        ON model_versions (IFNULL(owner_user_id, -1), kind) WHERE status = 'active';
    """,
    # 6: the durable inbox and training jobs, for running as several processes. Every update
    # received is stored before it is confirmed to the platform and marked done once handled,
    # so a process killed mid-update leaves it for a restart (or another worker) to finish.
    # A job is one training task, claimed by one trainer under a lease; a trainer that dies
    # leaves the lease to expire and the job to be claimed again. Times are unix seconds.
    """
    CREATE TABLE inbox (
        platform    TEXT NOT NULL,
        update_id   INTEGER NOT NULL,
        payload     TEXT NOT NULL,  -- the update as received (JSON)
        received_at REAL NOT NULL,
        claimed_by  TEXT,           -- the process handling it
        lease_until REAL,           -- after this, another process may take it over
        attempts    INTEGER NOT NULL DEFAULT 0,
        done_at     REAL,
        PRIMARY KEY (platform, update_id)
    );
    CREATE INDEX inbox_not_done ON inbox (platform, update_id) WHERE done_at IS NULL;

    CREATE TABLE jobs (
        id          INTEGER PRIMARY KEY,
        kind        TEXT NOT NULL,             -- 'head', 'crowd', 'finetune'
        user_id     INTEGER REFERENCES users (id) ON DELETE CASCADE,  -- NULL: not one person's
        due_key     TEXT NOT NULL,             -- what made it due: one job per due point
        status      TEXT NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'done', 'failed')),
        claimed_by  TEXT,
        lease_until REAL,
        attempts    INTEGER NOT NULL DEFAULT 0,
        created_at  REAL NOT NULL,
        finished_at REAL,
        detail      TEXT
    );
    CREATE UNIQUE INDEX one_job_per_due_point ON jobs (kind, IFNULL(user_id, -1), due_key);
    CREATE INDEX jobs_to_claim ON jobs (status, lease_until);
    """,
)
