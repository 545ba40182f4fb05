"""Roles over one database: workers queue training, trainers run it, and each process's
caches (heads, FAISS) follow what the others changed, without a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from bot import admin_text
from bot.runner import SharedService, serve
from bot.services import Services
from bot.settings import NO_TOKEN, Settings
from domain import User, Vote
from learner.encoder import ClipImageEncoder
from tests.test_services import ALICE, score, vote_even_liked


def as_role(settings: Settings, role: str) -> Settings:
    changes: dict[str, object] = {"role": role}
    if role == "worker":  # queued as soon as a person pauses
        changes |= {"retrain_after_votes": True, "retrain_pause_seconds": 0.0}
    if role == "trainer":
        changes |= {"telegram_bot_token": None}
    return settings.model_copy(update=changes)


@pytest.fixture
async def worker(settings: Settings, encoder: ClipImageEncoder) -> AsyncIterator[Services]:
    services = await Services.open(as_role(settings, "worker"), encoder)
    yield services
    await services.close()


@pytest.fixture
async def trainer(
    settings: Settings, encoder: ClipImageEncoder, worker: Services
) -> AsyncIterator[Services]:
    services = await Services.open(as_role(settings, "trainer"), encoder)
    yield services
    await services.close()


async def settled(worker: Services) -> None:
    """The worker's after-vote tasks have run (queued what they queue)."""
    for _ in range(200):
        await asyncio.sleep(0.01)
        if not worker.retraining._soon:
            return
    raise AssertionError("the worker's after-vote tasks did not finish")


async def alice_id(services: Services) -> int:
    return (await services.store.people.get_or_create_user("telegram", "1")).id


async def test_a_worker_queues_training_a_trainer_runs_it_and_the_worker_scores_with_it(
    worker: Services, trainer: Services
) -> None:
    sent: list[tuple[str, str]] = []

    async def notifier(user: User, text: str) -> None:
        sent.append((user.platform_user_id, text))

    worker.notifications.register("telegram", notifier)
    await vote_even_liked(worker, range(1, 13))
    await settled(worker)
    user_id = await alice_id(worker)
    [job] = await worker.store.jobs.jobs()
    assert (job.kind, job.user_id, job.status) == ("head", user_id, "queued")
    assert await worker.store.models.model_versions(user_id) == []  # the worker trained none
    assert (await score(worker, 100)).model_version is None

    ran = await trainer.jobs.run_once()
    assert ran is not None and ran.id == job.id
    assert (await worker.store.jobs.get(job.id)).status == "done"  # type: ignore[union-attr]
    [model] = await worker.store.models.model_versions(user_id)
    assert model.status == "active"

    # No restart: the worker's next score uses the trainer's head, and it tells Alice.
    assert (await score(worker, 101)).model_version == 1
    assert sent == []
    assert await worker.notices.deliver_waiting() == 1
    assert [who for who, _ in sent] == ["1"]
    assert await worker.notices.deliver_waiting() == 0  # sent once
    assert await trainer.jobs.run_once() is None


async def test_retrain_on_a_worker_queues_jobs_for_a_trainer(worker: Services) -> None:
    queue = worker.queue
    await vote_even_liked(worker, range(1, 5))
    await settled(worker)
    for job in await worker.store.jobs.jobs():  # the pause's own job, to see /retrain's
        await worker.store.db.execute("DELETE FROM jobs WHERE id = ?", (job.id,))
    assert await queue.enqueue_on_request("telegram", "999") is None  # never seen
    assert admin_text.queued_text(None, "999") == "I don't know user 999."
    queued = await queue.enqueue_on_request("telegram", "1")
    assert queued == ("person", 1)
    assert "user 1" in admin_text.queued_text(queued, "1")
    again = await queue.enqueue_on_request("telegram", "1")  # one waiting job per person
    assert again == ("person", 0) and "Already queued" in admin_text.queued_text(again, "1")
    assert await queue.enqueue_on_request("telegram", "crowd") == ("crowd", 1)
    kinds = sorted(j.kind for j in await worker.store.jobs.jobs())
    assert kinds == ["crowd", "head"]
    assert await worker.store.models.model_versions(await alice_id(worker)) == []


async def test_a_job_run_again_after_its_trainer_died_promotes_nothing_twice(
    worker: Services, trainer: Services, settings: Settings, encoder: ClipImageEncoder
) -> None:
    await vote_even_liked(worker, range(1, 13))
    await settled(worker)
    claimed = await trainer.store.jobs.claim(
        "dead", kinds=("head",), now=time.time(), lease_seconds=60, max_attempts=3
    )
    assert claimed is not None
    await trainer.jobs.run(claimed)  # trained and promoted, then the trainer died
    second = await Services.open(as_role(settings, "trainer"), encoder)
    try:
        second.jobs.clock = lambda: time.time() + 61  # the dead one's lease has run out
        again = await second.jobs.run_once()
        assert again is not None and again.id == claimed.id and again.attempts == 2
        job = await second.store.jobs.get(claimed.id)
        assert job is not None and job.status == "done" and job.detail is not None
        assert job.detail.startswith("not due")
        versions = await second.store.models.model_versions(await alice_id(second))
        assert [m.version for m in versions] == [1]
    finally:
        await second.close()


async def test_a_failing_job_is_retried_then_failed(
    worker: Services, trainer: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    await vote_even_liked(worker, range(1, 13))
    await settled(worker)
    trainer.jobs.max_attempts = 2

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(trainer.retraining, "retrain_user", broken)
    first = await trainer.jobs.run_once()
    assert first is not None
    assert (await trainer.store.jobs.get(first.id)).status == "queued"  # type: ignore[union-attr]
    second = await trainer.jobs.run_once()
    assert second is not None and second.attempts == 2
    job = await trainer.store.jobs.get(first.id)
    assert job is not None and job.status == "failed" and "disk full" in (job.detail or "")


async def test_votes_stored_by_another_worker_reach_this_ones_nearest_liked(
    worker: Services, settings: Settings, encoder: ClipImageEncoder
) -> None:
    other = await Services.open(as_role(settings, "worker"), encoder)
    try:
        first = await score(worker, 2)
        await worker.votes.record_vote(ALICE, first.submission_id, Vote.LIKE)
        user_id = await alice_id(worker)
        liked_here = worker.indexes.liked.ids_of(user_id)
        assert liked_here is not None and len(liked_here) == 1
        # Alice's next likes go to the other worker (another webhook process).
        for seed in (4, 6):
            there = await score(other, seed)
            await other.votes.record_vote(ALICE, there.submission_id, Vote.LIKE)
        await settled(worker)
        await settled(other)
        here = await score(worker, 8)
        assert here.closest_liked is not None
        assert len(worker.indexes.liked.ids_of(user_id) or ()) == 3
        # An un-like there leaves this worker's index too.
        await other.votes.record_vote(ALICE, there.submission_id, Vote.DISLIKE)
        await score(worker, 10)
        assert len(worker.indexes.liked.ids_of(user_id) or ()) == 2
        assert len(worker.indexes.disliked.ids_of(user_id) or ()) == 1
        # Nothing changed since: the check is one query, and rebuilds nothing.
        assert not await worker.indexes.refresh(user_id)
    finally:
        await other.close()


async def test_a_person_new_to_this_worker_gets_their_index_built_from_the_database(
    worker: Services, settings: Settings, encoder: ClipImageEncoder
) -> None:
    other = await Services.open(as_role(settings, "worker"), encoder)
    try:
        for seed in (2, 4):
            there = await score(other, seed)
            await other.votes.record_vote(ALICE, there.submission_id, Vote.LIKE)
        vector = np.frombuffer(
            (await worker.store.images.find_embedding_by_image(1, encoder.version)) or b"",
            np.float32,
        )
        user_id = await alice_id(worker)
        assert worker.indexes.nearest_liked(user_id, vector, 5) == []  # not seen here yet
        assert await worker.indexes.refresh(user_id)
        assert len(worker.indexes.nearest_liked(user_id, vector, 5)) == 2
    finally:
        await other.close()


def test_a_trainer_needs_no_platform_token_and_a_worker_does(settings: Settings) -> None:
    bare = {"_env_file": None, "clip_model": settings.clip_model, "data_dir": settings.data_dir}
    trainer = Settings(**bare, role="trainer")  # type: ignore[arg-type]
    assert trainer.role == "trainer" and trainer.telegram_bot_token is None
    with pytest.raises(ValidationError, match=NO_TOKEN):
        Settings(**bare, role="worker")  # type: ignore[arg-type]


def test_webhook_workers_must_share_a_secret(settings: Settings) -> None:
    hook = {"role": "worker", "webhook_url": "https://bot.example.com/telegram"}
    with pytest.raises(ValidationError, match="WEBHOOK_SECRET must be set"):
        settings.model_validate({**settings.model_dump(), **hook})
    shared = settings.model_validate({**settings.model_dump(), **hook, "webhook_secret": "s3cret"})
    assert shared.webhook_secret == "s3cret"
    alone = settings.model_validate({**settings.model_dump(), "webhook_url": hook["webhook_url"]})
    assert alone.role == "all" and alone.webhook_secret is None  # one process: a random one


async def wait_until(check: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():  # type: ignore[misc]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def test_a_trainer_process_serves_no_platform_and_runs_the_queued_jobs(
    worker: Services, settings: Settings, encoder: ClipImageEncoder, tmp_path: Path
) -> None:
    await vote_even_liked(worker, range(1, 13))
    await settled(worker)
    trainer_settings = as_role(settings, "trainer").model_copy(update={"job_poll_seconds": 0.05})

    async def open_trainer() -> Services:
        return await Services.open(trainer_settings, encoder)

    stop = asyncio.Event()
    running = asyncio.create_task(serve(trainer_settings, SharedService(open_trainer), [], stop))
    user_id = await alice_id(worker)

    async def trained() -> bool:
        return await worker.store.models.active_model(user_id) is not None

    try:
        await wait_until(trained)
        [job] = await worker.store.jobs.jobs("head")
        await wait_until(lambda: _status_is(worker, job.id, "done"))
        notices = await worker.store.jobs.jobs("notify")
        assert len(notices) == 1 and notices[0].user_id == user_id  # left for a worker
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)


async def _status_is(services: Services, job_id: int, status: str) -> bool:
    job = await services.store.jobs.get(job_id)
    return job is not None and job.status == status


async def test_retained_images_go_to_image_dir(
    settings: Settings, encoder: ClipImageEncoder, tmp_path: Path
) -> None:
    shared = tmp_path / "shared-images"
    services = await Services.open(settings.model_copy(update={"image_dir": shared}), encoder)
    try:
        await score(services, 3)
        [path] = [p for p in shared.rglob("*") if p.is_file()]
        [stored] = await services.store.db.fetch_all("SELECT file_path FROM images")
        assert services.data_dir.path(stored[0]) == path
        assert not (settings.data_dir / "images").exists()
    finally:
        await services.close()
