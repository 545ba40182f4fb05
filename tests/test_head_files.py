from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

import bot.retraining
from bot import admin_text
from bot.services import Services
from bot.settings import Settings
from domain import Rollback
from learner.encoder import ClipImageEncoder
from learner.training import HeadTrainingResult, train_and_compare
from tests.test_services import score, vote_even_liked


async def test_old_head_files_go_and_rollback_says_so(
    settings: Settings, encoder: ClipImageEncoder
) -> None:
    service = await Services.open(settings.model_copy(update={"head_files_kept": 2}), encoder)
    try:
        alice = await service.store.people.get_or_create_user("telegram", "1", "Alice")
        rounds = [range(1, 13)] + [range(first, first + 3) for first in range(13, 28, 3)]
        for round_, seeds in enumerate(rounds, start=1):
            await vote_even_liked(service, seeds)
            [outcome] = await service.retraining.retrain_due_heads(min_new_votes=3, trigger="test")
            assert outcome.version == round_

        versions = await service.store.models.model_versions(alice.id)
        [active] = [m for m in versions if m.status == "active"]
        others = sorted((m.version for m in versions if m is not active), reverse=True)
        kept = {active.version, *others[:2]}
        on_disk = {m.version for m in versions if service.data_dir.path(m.file_path).exists()}
        assert on_disk == kept and len(versions) == 6

        listing = await service.admin.models_of("telegram", "1")
        assert listing is not None and listing.removed == frozenset(range(1, 7)) - kept
        gone, still = min(listing.removed), min(kept - {active.version})
        assert await service.admin.rollback("telegram", "1", gone) is Rollback.FILE_REMOVED
        assert (await service.store.models.active_model(alice.id)) == active  # nothing changed
        assert await service.admin.rollback("telegram", "1", still) is Rollback.DONE
        assert (await score(service, 500)).model_version == still
        assert await service.admin.rollback("telegram", "1", 99) is Rollback.NO_SUCH_VERSION
        assert await service.admin.rollback("telegram", "404", 1) is Rollback.UNKNOWN_USER
    finally:
        await service.close()


async def test_rollback_to_an_unreadable_head_file_is_refused(
    service: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rollback used to check only that the file existed: it said done, and the person was
    # scored by the cold-start prior from then on.
    def promoted(*args: Any) -> HeadTrainingResult:
        # v2 must be active: on these dozen arbitrary votes a holdout AUC is chance
        return replace(train_and_compare(*args), promote=True, reason="test")

    monkeypatch.setattr(bot.retraining, "train_and_compare", promoted)
    await vote_even_liked(service, range(1, 13))
    await service.retraining.retrain_due_heads(min_new_votes=3, trigger="test")
    await vote_even_liked(service, range(13, 19))
    [second] = await service.retraining.retrain_due_heads(min_new_votes=3, trigger="test")
    assert second.version == 2 and second.promoted, second
    alice = await service.store.people.get_or_create_user("telegram", "1", "Alice")
    [v1] = [m for m in await service.store.models.model_versions(alice.id) if m.version == 1]
    service.data_dir.path(v1.file_path).write_bytes(b"truncated")
    assert await service.admin.rollback("telegram", "1", 1) is Rollback.UNREADABLE
    active = await service.store.models.active_model(alice.id)
    assert active is not None and active.version == 2
    assert (await score(service, 500)).model_version == 2
    assert admin_text.rollback_text("1", 1, Rollback.UNREADABLE, 20) == (
        "Model v1 of user 1 can't be restored: its file can't be read (see the log)."
    )
