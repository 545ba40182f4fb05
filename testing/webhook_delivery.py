"""Telegram's side of a webhook, for a fake Bot API: push queued updates to the bot over HTTP.

Telegram POSTs each update to the webhook URL with the secret token header and retries until
the answer is 2xx; behind a load balancer any of the workers may receive it. `WebhookDelivery`
does the same for a :class:`~testing.fake_bot_api.FakeBotAPI`: it takes the updates the
simulated people queue, POSTs each to one of the given URLs (round robin), and when a worker
refuses, errs or is down (connection refused, as after ``kill -9``), tries the next URL after
a short pause, until some worker answers 200. An update answered 200 is gone, as in Telegram.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from testing.fake_bot_api import FakeBotAPI


class WebhookDelivery:
    """Runs in background threads between `start()` and `stop()`."""

    def __init__(
        self,
        api: FakeBotAPI,
        urls: list[str],
        secret: str,
        *,
        connections: int = 16,
        retry_seconds: float = 0.25,
    ) -> None:
        self.api = api
        self.urls = list(urls)
        self.secret = secret
        self.retry_seconds = retry_seconds
        self.delivered: Counter[str] = Counter()  # 200s per URL
        self.failures: Counter[str] = Counter()  # refusals, errors, connection failures per URL
        self._next = itertools.count()
        self._stop = threading.Event()
        self._in_flight = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(connections, thread_name_prefix="webhook")
        self._client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=connections))
        self._thread = threading.Thread(target=self._run, name="webhook-delivery", daemon=True)

    def start(self) -> WebhookDelivery:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self.api._lock:
            self.api._cond.notify_all()
        self._thread.join()
        self._pool.shutdown(wait=True)
        self._client.close()

    @property
    def in_flight(self) -> int:
        """Updates taken from the queue and not yet answered 200 by any worker."""
        with self._lock:
            return self._in_flight

    def _take(self) -> list[dict[str, Any]]:
        with self.api._lock:
            while not self.api._queue and not self._stop.is_set():
                self.api._cond.wait(0.1)
            taken = [q.update for q in self.api._queue]
            self.api._queue.clear()
            return taken

    def _run(self) -> None:
        while not self._stop.is_set():
            for update in self._take():
                with self._lock:
                    self._in_flight += 1
                self._pool.submit(self._deliver, json.dumps(update).encode())

    def _deliver(self, body: bytes) -> None:
        headers = {
            "Content-Type": "application/json",
            "X-Telegram-Bot-Api-Secret-Token": self.secret,
        }
        try:
            while not self._stop.is_set():
                url = self.urls[next(self._next) % len(self.urls)]
                try:
                    status = self._client.post(url, content=body, headers=headers).status_code
                except httpx.HTTPError:
                    status = 0
                with self._lock:
                    (self.delivered if status == 200 else self.failures)[url] += 1
                if status == 200:
                    return
                time.sleep(self.retry_seconds)
        finally:
            with self._lock:
                self._in_flight -= 1
