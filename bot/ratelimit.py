"""A per-key sliding-window limit: at most N events in any window of W seconds."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable

SWEEP_EVERY = 1024  # calls between sweeps of keys with nothing left in the window


class SlidingWindowLimit:
    def __init__(
        self,
        max_events: int,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_events = max_events
        self.window = window_seconds
        self._clock = clock
        self._events: dict[Hashable, deque[float]] = {}
        self._calls = 0

    def __len__(self) -> int:
        """Keys with events still in the window (or not yet swept)."""
        return len(self._events)

    def allow(self, key: Hashable) -> bool:
        """Count an event for `key` and say whether it is within the limit.
        Refused events are not counted, so a person who waits gets through."""
        now = self._clock()
        self._calls += 1
        if self._calls % SWEEP_EVERY == 0:
            self._sweep(now)
        events = self._events.setdefault(key, deque())
        while events and events[0] <= now - self.window:
            events.popleft()
        if len(events) >= self.max_events:
            return False
        events.append(now)
        return True

    def _sweep(self, now: float) -> None:
        # Everyone who ever sent an image would otherwise keep a deque for the process's life.
        idle = [
            k for k, events in self._events.items() if not events or events[-1] <= now - self.window
        ]
        for key in idle:
            del self._events[key]
