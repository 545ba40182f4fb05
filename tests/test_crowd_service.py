"""The crowd model in the bot: trained on everyone's votes, gated, used for newcomers and as
every head's prior, and left by people who /forget."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import bot.crowd
from bot import render
from bot.services import Services
from bot.settings import Settings
from domain import IncomingImage, ModelVersion, Person, Scored, Vote
from learner.encoder import ClipImageEncoder
from tests.test_backbone import coloured

PEOPLE = [Person("telegram", str(n)) for n in (1, 2, 3)]
NEWCOMER = Person("telegram", "9")


async def send(services: Services, person: Person, key: str, data: bytes) -> Scored:
    async def download() -> bytes:
        return data

    out = await services.scoring.score_image(
        IncomingImage(person, person.platform_user_id, key, None, None), download
    )
    assert isinstance(out, Scored)
    return out


async def everyone_likes_red(services: Services, people: list[Person], seeds: range) -> None:
    for person in people:
        for seed in seeds:
            red = seed % 2 == 0
            out = await send(services, person, f"{seed}", coloured(seed * 7 + 1, red))
            vote = Vote.LIKE if red else Vote.DISLIKE
            await services.votes.record_vote(person, out.submission_id, vote)


@pytest.fixture
async def crowded(settings: Settings, encoder: ClipImageEncoder) -> AsyncIterator[Services]:
    settings = settings.model_copy(
        update={"crowd_min_people": 3, "crowd_min_votes": 30, "images_per_minute": 1000}
    )
    services = await Services.open(settings, encoder)
    await everyone_likes_red(services, PEOPLE, range(16))
    yield services
    await services.close()


async def test_a_newcomer_is_scored_by_the_crowd_model(crowded: Services) -> None:
    before = await send(crowded, NEWCOMER, "r0", coloured(1001, True))
    assert not before.by_crowd and render.model_label(before) == "cold start"

    outcome = await crowded.crowd_training.retrain("test")
    assert outcome.version == 1 and outcome.promoted and outcome.people == 3, outcome
    row = await crowded.store.models.active_global("crowd")
    assert row is not None and crowded.data_dir.path(row.file_path).exists()

    red = await send(crowded, NEWCOMER, "r1", coloured(1002, True))
    blue = await send(crowded, NEWCOMER, "b1", coloured(1003, False))
    assert red.by_crowd and blue.by_crowd and red.model_version is None
    assert "crowd model" in render.score_text(red)
    assert red.score > 0.5 > blue.score  # what everyone likes, before the first vote


async def test_a_crowd_model_that_ranks_worse_is_not_promoted(
    crowded: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await crowded.crowd_training.retrain("test")
    assert first.promoted
    active = crowded.crowd.model
    real = bot.crowd.evaluate_crowd

    def active_is_better(model, *args):  # type: ignore[no-untyped-def]
        auc = real(model, *args)
        return auc if model is active else auc - 0.1

    monkeypatch.setattr(bot.crowd, "evaluate_crowd", active_is_better)
    await everyone_likes_red(crowded, PEOPLE[:1], range(16, 24))
    second = await crowded.crowd_training.retrain("test")
    assert second.version == 2 and not second.promoted, second
    assert crowded.crowd.model is active
    row = await crowded.store.models.active_global("crowd")
    assert row is not None and row.version == 1


async def test_heads_start_from_the_crowd_and_say_so(crowded: Services) -> None:
    await crowded.crowd_training.retrain("test")
    outcome = await crowded.retraining.retrain_user(1, "test")
    assert outcome is not None and outcome.version is not None
    head = await crowded.store.models.active_model(1)
    assert head is not None and head.metrics.get("crowd_weight") is not None


def test_stats_say_whether_the_head_uses_the_crowd() -> None:
    def head(crowd_weight: float | None, offset: float = 0.0, advice: float = 0.0) -> ModelVersion:
        metrics = {"agreed": 4.0, "crowd_weight": crowd_weight}
        metrics |= {"crowd_offset": offset, "crowd_advice": advice}
        return ModelVersion(1, 1, "head", 2, "f", "enc", 20, 5, 3, "active", "t", metrics)

    assert "what everyone likes" in render.model_summary(head(0.6))
    assert "what everyone likes" in render.model_summary(head(0.0, offset=0.5))
    advised = render.model_summary(head(0.0, advice=1.0))
    assert "crowd model" in advised and "what everyone likes" not in advised
    assert "crowd model" not in render.model_summary(head(0.0))
    assert "crowd model" not in render.model_summary(head(None))


async def test_forgotten_votes_leave_the_next_crowd_model(crowded: Services) -> None:
    first = await crowded.crowd_training.retrain("test")
    assert first.people == 3
    await crowded.people.forget(PEOPLE[0])
    rows = await crowded.store.votes.everyones_labelled_embeddings(crowded.encoder_version)
    assert {user_id for user_id, _ in rows} == {2, 3}
    # With two people left the next one cannot be trained (CROWD_MIN_PEOPLE 3)...
    assert (await crowded.crowd_training.retrain("test")).version is None
    # ...and once someone new votes, it is trained without the forgotten person.
    await everyone_likes_red(crowded, [Person("telegram", "4")], range(16))
    again = await crowded.crowd_training.retrain("test")
    assert again.version == 2 and again.people == 3


async def test_a_crowd_model_another_process_promoted_scores_newcomers_here(
    crowded: Services, encoder: ClipImageEncoder
) -> None:
    worker_settings = crowded.settings.model_copy(update={"model_refresh_seconds": 0.0})
    worker = await Services.open(worker_settings, encoder)
    try:
        assert not (await send(worker, NEWCOMER, "w0", coloured(1001, True))).by_crowd
        outcome = await crowded.crowd_training.retrain("test")  # "the trainer"
        assert outcome.promoted
        after = await send(worker, NEWCOMER, "w1", coloured(1003, True))
        assert after.by_crowd and worker.crowd.model is not None
    finally:
        await worker.close()
