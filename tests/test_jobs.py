"""Training jobs in the database: one job per due point, one claimer per job, leases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from storage.store import Store

LEASE = 60.0


@pytest.fixture
async def stores(database_url: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two connections to one database, as two processes have, on each backend."""
    first = await Store.connect(database_url)
    second = await Store.connect(database_url)
    yield first, second
    await first.close()
    await second.close()


async def _person(store: Store, name: str = "1") -> int:
    return (await store.people.get_or_create_user("telegram", name)).id


async def claim(store: Store, who: str, now: float, kinds: tuple[str, ...] = ("head",)):  # type: ignore[no-untyped-def]
    return await store.jobs.claim(who, kinds=kinds, now=now, lease_seconds=LEASE, max_attempts=2)


async def test_the_same_due_point_enqueued_twice_is_one_job(stores: tuple[Store, Store]) -> None:
    a, b = stores
    user_id = await _person(a)
    first, second = await asyncio.gather(
        a.jobs.enqueue("head", user_id, "r5", 1.0), b.jobs.enqueue("head", user_id, "r5", 1.0)
    )
    assert sorted([first, second]) == [False, True]
    # Done, the same due point is still not queued again; the crowd's "r5" is another job.
    job = await claim(a, "t1", 2.0)
    assert job is not None
    assert await a.jobs.finish(job.id, "t1", now=3.0, detail="ok")
    assert not await a.jobs.enqueue("head", user_id, "r5", 4.0)
    assert await a.jobs.enqueue("crowd", None, "r5", 4.0)
    assert not await b.jobs.enqueue("crowd", None, "r5", 4.0)
    assert [j.kind for j in await a.jobs.jobs()] == ["head", "crowd"]


async def test_a_later_due_point_waits_behind_a_queued_job_of_the_same_person(
    stores: tuple[Store, Store],
) -> None:
    a, _ = stores
    alice, bob = await _person(a, "1"), await _person(a, "2")
    assert await a.jobs.enqueue("head", alice, "r5", 1.0)
    assert not await a.jobs.enqueue("head", alice, "r7", 1.0)  # r5's job will see r7 too
    assert await a.jobs.enqueue("head", bob, "r7", 1.0)
    await claim(a, "t1", 2.0)  # alice's, now running: a new due point queues again
    assert await a.jobs.enqueue("head", alice, "r9", 3.0)


async def test_two_claimers_racing_for_one_job_one_wins(
    stores: tuple[Store, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = stores
    assert await a.jobs.enqueue("head", await _person(a), "r1", 1.0)
    # Both have seen the job as claimable before either claims it: the window of the race.
    both_looked = asyncio.Barrier(2)
    for store in (a, b):

        async def look_together(sql: str, params: Any = (), read: Any = store.db.fetch_one) -> Any:
            found = await read(sql, params)
            if sql.startswith("SELECT 1 FROM jobs"):
                await both_looked.wait()
            return found

        monkeypatch.setattr(store.db, "fetch_one", look_together)
    got = await asyncio.gather(claim(a, "t1", 2.0), claim(b, "t2", 2.0))
    winners = [job for job in got if job is not None]
    assert len(winners) == 1
    assert winners[0].status == "running" and winners[0].attempts == 1
    assert winners[0].claimed_by in {"t1", "t2"}


async def test_many_claimers_take_every_job_exactly_once(stores: tuple[Store, Store]) -> None:
    a, b = stores
    for n in range(12):
        assert await a.jobs.enqueue("head", await _person(a, str(n)), "r1", 1.0)
    taken: dict[str, list[int]] = {}

    async def claimer(store: Store, who: str) -> None:
        while (job := await claim(store, who, 2.0)) is not None:
            taken.setdefault(who, []).append(job.id)
            await asyncio.sleep(0)

    await asyncio.gather(
        *(claimer(s, f"{name}{i}") for i in range(3) for s, name in stores_named(a, b))
    )
    ids = [job_id for got in taken.values() for job_id in got]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 12


def stores_named(a: Store, b: Store) -> list[tuple[Store, str]]:
    return [(a, "a"), (b, "b")]


async def test_two_jobs_of_one_person_never_run_at_once(stores: tuple[Store, Store]) -> None:
    a, b = stores
    user_id = await _person(a)
    assert await a.jobs.enqueue("head", user_id, "r1", 1.0)
    first = await claim(a, "t1", 2.0)
    assert first is not None
    assert await a.jobs.enqueue("head", user_id, "r2", 3.0)
    assert await claim(b, "t2", 3.0) is None  # t1 still holds the person's lease
    assert await a.jobs.finish(first.id, "t1", now=4.0, detail="ok")
    second = await claim(b, "t2", 4.0)
    assert second is not None and second.due_key == "r2"


async def test_an_expired_lease_is_claimed_again_and_the_dead_claim_cannot_finish(
    stores: tuple[Store, Store],
) -> None:
    a, b = stores
    assert await a.jobs.enqueue("head", await _person(a), "r1", 1.0)
    dead = await claim(a, "t1", 2.0)
    assert dead is not None
    assert await claim(b, "t2", 2.0 + LEASE - 1) is None  # still leased
    again = await claim(b, "t2", 2.0 + LEASE + 1)
    assert again is not None and again.id == dead.id and again.attempts == 2
    assert not await a.jobs.finish(dead.id, "t1", now=70.0, detail="late")
    assert not await a.jobs.renew(dead.id, "t1", 200.0)
    assert await b.jobs.finish(again.id, "t2", now=70.0, detail="ok")
    assert (await a.jobs.get(dead.id)).status == "done"  # type: ignore[union-attr]


async def test_a_job_whose_trainer_died_every_time_is_failed(stores: tuple[Store, Store]) -> None:
    a, _ = stores
    assert await a.jobs.enqueue("head", await _person(a), "r1", 1.0)
    now = 2.0
    for attempt in (1, 2):  # max_attempts=2
        job = await claim(a, f"t{attempt}", now)
        assert job is not None and job.attempts == attempt
        now += LEASE + 1
    assert await claim(a, "t3", now) is None
    [job] = await a.jobs.jobs()
    assert job.status == "failed" and job.finished_at == now


async def test_notices_are_claimed_by_the_platform_that_serves_the_person(
    stores: tuple[Store, Store],
) -> None:
    a, _ = stores
    discord_user = (await a.people.get_or_create_user("discord", "9")).id
    assert await a.jobs.enqueue("notify", discord_user, "n1", 1.0, detail="hello")
    assert await a.jobs.enqueue("notify", discord_user, "n2", 1.0, detail="again")  # no wait
    telegram_only = await a.jobs.claim(
        "w1",
        kinds=("notify",),
        now=2.0,
        lease_seconds=LEASE,
        max_attempts=2,
        platforms=["telegram"],
    )
    assert telegram_only is None
    assert await claim(a, "t1", 2.0) is None  # a trainer never takes messages
    job = await a.jobs.claim(
        "w2", kinds=("notify",), now=2.0, lease_seconds=LEASE, max_attempts=2, platforms=["discord"]
    )
    assert job is not None and job.detail == "hello"


async def test_finished_jobs_are_pruned_and_running_ones_kept(stores: tuple[Store, Store]) -> None:
    a, _ = stores
    for n in range(3):
        assert await a.jobs.enqueue("head", await _person(a, str(n)), "r1", 1.0)
    done, running = await claim(a, "t1", 2.0), await claim(a, "t1", 2.0)
    assert done is not None and running is not None
    assert await a.jobs.finish(done.id, "t1", now=10.0, detail="ok")
    assert await a.jobs.prune(finished_before=10.0) == 0
    assert await a.jobs.prune(finished_before=11.0) == 1
    assert sorted(j.status for j in await a.jobs.jobs()) == ["queued", "running"]
