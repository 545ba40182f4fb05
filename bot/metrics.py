"""Every Prometheus metric the bot exports, and how /metrics renders them.

Counted in the process where the event happens (the platform adapters know the outcome of
each photo and vote); what several processes share (training runs, the inbox's backlog) is
read from the database at each scrape, so every worker reports the same fleet-wide figure.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from domain import AlreadyAnswered, Refused, ScoreOutcome, VoteOutcome

if TYPE_CHECKING:  # the services load torch, FAISS and the database
    from bot.services import Services

PHOTOS = Counter(
    "tastebot_photos",
    "Images received, by what came of them: scored, rated_before (a near-duplicate of one "
    "voted on), refused (not an image, too big, rate-limited), duplicate (a redelivered update "
    "already answered).",
    ["platform", "outcome"],
)
REPLY_SECONDS = Histogram(
    "tastebot_reply_seconds",
    "Images: from the update's arrival (as stored in the inbox) to its handler having replied.",
    ["platform"],
    # A scored photo takes ~0.1-0.5 s; minutes mean it waited through a restart.
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
VOTES = Counter(
    "tastebot_votes",
    "Vote taps, by outcome: saved (a new or changed vote), unchanged (a repeated tap), "
    "unknown (the image is gone).",
    ["platform", "outcome"],
)
UPDATES_IN_FLIGHT = Gauge(
    "tastebot_updates_in_flight", "Updates this process is handling now.", ["platform"]
)
INBOX_REPLAYED = Counter(
    "tastebot_inbox_replayed",
    "Updates taken over from the inbox after their first handler died (or stopped in time).",
    ["platform"],
)


def count_photo(platform: str, outcome: ScoreOutcome) -> None:
    if isinstance(outcome, AlreadyAnswered):
        label = "duplicate"
    elif isinstance(outcome, Refused):
        label = "refused"
    else:
        label = "scored" if outcome.rated_before is None else "rated_before"
    PHOTOS.labels(platform, label).inc()


def count_vote(platform: str, outcome: VoteOutcome | None) -> None:
    label = "unknown" if outcome is None else "saved" if outcome.changed else "unchanged"
    VOTES.labels(platform, label).inc()


class _FromDatabase(Collector):
    """Figures read from the database by `render` just before each scrape."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self.runs: dict[tuple[str, str], int] = {}

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        runs = CounterMetricFamily(
            "tastebot_retrains",
            "Training runs recorded in the database (every process), by kind and outcome; "
            "a person's /forget removes theirs, which Prometheus reads as a counter reset.",
            labels=["kind", "outcome"],
        )
        for (kind, outcome), count in sorted(self.runs.items()):
            runs.add_metric([kind, outcome], count)
        yield runs
        if self.pending is not None:
            yield GaugeMetricFamily(
                "tastebot_inbox_pending",
                "Inbox updates not handled yet, every platform and process together.",
                value=self.pending,
            )


_FROM_DATABASE = _FromDatabase()
REGISTRY.register(_FROM_DATABASE)


async def render(services: Services | None) -> bytes:
    """The text exposition of every metric, with the database's figures fresh."""
    if services is not None:
        _FROM_DATABASE.pending = await services.store.inbox.pending()
        _FROM_DATABASE.runs = await services.store.telemetry.training_runs()
    return generate_latest(REGISTRY)
