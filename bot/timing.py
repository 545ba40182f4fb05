"""Per-stage timings of one request (download, decode, forward, SQLite, ...), for logs and bench.

``with timed("score") as times:`` starts a record for the current task; inside it,
``with stage("decode"):`` (or ``add("forward", seconds)``) adds to it from any coroutine the
task awaits. Outside a record both do nothing, so library code can time itself for free.
On exit the record is logged at DEBUG on ``bot.timing``; when the environment variable
``TASTEBOT_STAGE_TIMINGS`` names a file (the benchmark sets it), it is also appended there
as one JSON line.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

ENV_FILE = "TASTEBOT_STAGE_TIMINGS"
_current: contextvars.ContextVar[StageTimes | None] = contextvars.ContextVar(
    "stage_times", default=None
)
_file_lock = threading.Lock()


@dataclass
class StageTimes:
    what: str
    started: float = field(default_factory=time.monotonic)  # CLOCK_MONOTONIC: same in every process
    seconds: dict[str, float] = field(default_factory=dict)
    notes: dict[str, object] = field(default_factory=dict)  # batch size, outcome, ...

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds


@contextmanager
def timed(what: str) -> Iterator[StageTimes]:
    times = StageTimes(what)
    token = _current.set(times)
    try:
        yield times
    finally:
        _current.reset(token)
        ended = time.monotonic()
        if log.isEnabledFor(logging.DEBUG):
            parts = " ".join(f"{k}={v * 1000:.1f}ms" for k, v in times.seconds.items())
            log.debug("%s %.1fms: %s %s", what, (ended - times.started) * 1000, parts, times.notes)
        path = os.environ.get(ENV_FILE)
        if path:
            record = {"what": what, "started": times.started, "ended": ended}
            record.update(seconds=times.seconds, notes=times.notes)
            with _file_lock, open(path, "a", encoding="utf-8") as out:
                out.write(json.dumps(record) + "\n")


@contextmanager
def stage(name: str) -> Iterator[None]:
    times = _current.get()
    if times is None:
        yield
        return
    started = time.perf_counter()
    try:
        yield
    finally:
        times.add(name, time.perf_counter() - started)


def add(name: str, seconds: float) -> None:
    times = _current.get()
    if times is not None:
        times.add(name, seconds)


def note(name: str, value: object) -> None:
    times = _current.get()
    if times is not None:
        times.notes[name] = value
