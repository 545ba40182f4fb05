"""Times as the database stores them: ISO 8601 UTC text with milliseconds.

The format of SQLite's ``strftime('%Y-%m-%dT%H:%M:%fZ', 'now')`` (the column defaults),
so rows written by either backend, by a default or from Python, sort and read alike.
"""

from __future__ import annotations

from datetime import UTC, datetime

# The same text as a PostgreSQL column default.
POSTGRES_NOW = """to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""


def utc_now() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
