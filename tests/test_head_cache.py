from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

import bot.retraining
from bot.head_cache import HeadCache
from bot.services import Services
from domain import Rollback
from learner.head import train_head
from learner.training import HeadTrainingResult, train_and_compare
from tests.test_services import score, vote_even_liked


def _head(seed: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(8, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return train_head(x, np.array([0, 1] * 4))


def test_one_head_per_person_and_least_recently_used_go_first() -> None:
    cache = HeadCache(max_people=2)
    h1, h2, h3 = _head(1), _head(2), _head(3)
    cache.put(user_id=1, model_id=10, head=h1)
    cache.put(user_id=1, model_id=11, head=h2)  # a newer version replaces the older
    assert cache.model_ids() == {1: 11}
    assert cache.get(1, 10) is None and cache.get(1, 11) is h2

    cache.put(user_id=2, model_id=20, head=h3)
    assert cache.get(1, 11) is h2  # person 1 used last: person 2 is the oldest now
    cache.put(user_id=3, model_id=30, head=h1)
    assert cache.model_ids() == {1: 11, 3: 30}

    cache.forget(1)
    assert cache.model_ids() == {3: 30} and len(cache) == 1
    with pytest.raises(ValueError):
        HeadCache(max_people=0)


async def test_retrains_and_rollback_keep_only_the_active_head_in_memory(
    service: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before the cache, every version ever trained (rejected ones too) stayed in memory.
    # The promotion decision is set here: on a dozen votes that are random with respect to
    # the tiny CLIP's embeddings, a holdout AUC of 0 or 1 is chance, and this test is about
    # which heads stay in memory, not about which one learned more.
    def rejected_in_round_3(*args: Any) -> HeadTrainingResult:
        result = train_and_compare(*args)
        return replace(result, promote=not reject, reason="test")

    monkeypatch.setattr(bot.retraining, "train_and_compare", rejected_in_round_3)
    alice = await service.store.people.get_or_create_user("telegram", "1", "Alice")
    active_ids = []
    for round_, seeds in enumerate((range(1, 13), range(13, 19), range(19, 25)), start=1):
        reject = round_ == 3
        await vote_even_liked(service, seeds)
        [outcome] = await service.retraining.retrain_due_heads(min_new_votes=3, trigger="test")
        assert outcome.version == round_ and outcome.promoted == (round_ < 3)
        active = await service.store.models.active_model(alice.id)
        assert active is not None
        active_ids.append(active.id)
        assert service.heads.cache.model_ids() == {alice.id: active.id}
    assert active_ids[2] == active_ids[1]  # v3 was rejected: v2 still scores, from memory

    assert await service.admin.rollback("telegram", "1", 1) is Rollback.DONE
    after = await score(service, 500)
    assert after.model_version == 1
    [v1] = [m for m in await service.store.models.model_versions(alice.id) if m.version == 1]
    assert service.heads.cache.model_ids() == {alice.id: v1.id}
