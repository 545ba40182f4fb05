"""Fine-tuning the backbone end to end: child process, re-embedding, comparison on
held-out votes, promotion or not, and failures that leave the active models untouched."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPModel

import bot.backbone
import bot.backbone_compare
from bot import admin_text
from bot.backbone import BackboneTuner
from bot.roles import follow_backbone
from bot.services import Services
from bot.settings import Settings
from domain import IncomingImage, Person, Rollback, Scored, Vote
from learner.encoder import ClipImageEncoder
from learner.finetune import FinetuneConfig, FinetuneExample, FinetuneProgress, FinetuneResult
from learner.head import TasteHead
from learner.training import is_holdout

FAST = FinetuneConfig(head_epochs=1, encoder_epochs=1, unfreeze_blocks=1, batch_size=8)
PEOPLE = (Person("telegram", "1"), Person("telegram", "2"))


def coloured(seed: int, red: bool) -> bytes:
    """Reddish or bluish pictures: a taste even a tiny random CLIP can tell apart."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 90, size=(48, 48, 3))
    pixels[..., 0 if red else 2] += 160
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, "PNG")
    return out.getvalue()


async def vote_on_pictures(service: Services, n: int = 20) -> None:
    """Person 1 likes red, person 2 likes blue; both vote on the same n pictures."""
    for seed in range(n):
        data = coloured(seed, red=seed % 2 == 0)

        async def download(data: bytes = data) -> bytes:
            return data

        for i, person in enumerate(PEOPLE):
            out = await service.scoring.score_image(
                IncomingImage(person, person.platform_user_id, str(seed), None, None), download
            )
            assert isinstance(out, Scored)
            likes = (seed % 2 == 0) == (i == 0)
            await service.votes.record_vote(
                person, out.submission_id, Vote.LIKE if likes else Vote.DISLIKE
            )


@pytest.fixture
async def trained(settings: Settings, encoder: ClipImageEncoder) -> AsyncIterator[Services]:
    settings = settings.model_copy(update={"finetune_min_votes": 10})
    service = await Services.open(settings, encoder)
    await vote_on_pictures(service)
    outcomes = await service.retraining.retrain_due_heads(min_new_votes=1, trigger="test")
    assert all(o.promoted for o in outcomes) and len(outcomes) == 2
    yield service
    await service.close()


def degenerate_runner(
    model_dir: str,
    examples: Sequence[FinetuneExample],
    out_dir: Path,
    config: FinetuneConfig,
    progress: Callable[[FinetuneProgress], None],
    should_stop: Callable[[], bool],
) -> FinetuneResult:
    """A 'fine-tune' that maps every image to the same embedding: worse than anything."""
    model = CLIPModel.from_pretrained(model_dir)
    with torch.no_grad():
        model.vision_model.post_layernorm.weight.zero_()
        model.vision_model.post_layernorm.bias.fill_(1.0)
    model.save_pretrained(out_dir)
    CLIPImageProcessorPil.from_pretrained(model_dir).save_pretrained(out_dir)
    return FinetuneResult(out_dir, "parent", len(examples), 0, (1, 2), 0.7, 0.7, 0.1, False, "cpu")


def crashing_runner(
    model_dir: str,
    examples: Sequence[FinetuneExample],
    out_dir: Path,
    config: FinetuneConfig,
    progress: Callable[[FinetuneProgress], None],
    should_stop: Callable[[], bool],
) -> FinetuneResult:
    progress(FinetuneProgress("heads", 1, 1, 1, 2, 0.5, 0.1))
    raise RuntimeError("out of memory (pretend)")


async def snapshot(service: Services) -> tuple[list[tuple[object, ...]], set[str]]:
    rows = await service.store.db.fetch_all(
        "SELECT id, owner_user_id, kind, version, status FROM model_versions ORDER BY id"
    )
    encoders = await service.store.db.fetch_all("SELECT DISTINCT encoder_version FROM embeddings")
    return [tuple(r) for r in rows], {r[0] for r in encoders}


async def test_a_worse_encoder_is_not_promoted(trained: Services) -> None:
    before = await snapshot(trained)
    messages: list[str] = []

    async def progress(text: str) -> None:
        messages.append(text)

    tuner = trained.make_backbone_tuner(config=FAST, runner=degenerate_runner)
    outcome = await tuner.run("test", on_progress=progress)
    assert outcome.version == 1 and not outcome.promoted, outcome
    assert outcome.new_auc is not None and outcome.old_auc is not None
    assert outcome.new_auc < outcome.old_auc
    assert any(m.startswith("Re-embedding images: ") for m in messages)
    models, encoders = await snapshot(trained)
    # The rejected encoder is recorded; nothing active changed; its embeddings are gone.
    assert models == before[0] + [(models[-1][0], None, "backbone", 1, "rejected")]
    assert encoders == before[1] == {trained.encoder.embedder.version}
    assert not (trained.data_dir.root / "models" / "backbones" / "v1").exists()
    runs = await trained.store.db.fetch_all(
        "SELECT outcome, detail FROM training_runs WHERE kind = 'backbone'"
    )
    assert runs[0][0] == "rejected" and "kept the current encoder" in runs[0][1]


async def test_a_crashing_run_is_recorded_failed_and_changes_nothing(trained: Services) -> None:
    before = await snapshot(trained)
    outcome = await trained.make_backbone_tuner(config=FAST, runner=crashing_runner).run("test")
    assert not outcome.promoted and "out of memory (pretend)" in outcome.reason
    assert await snapshot(trained) == before
    runs = await trained.store.db.fetch_all(
        "SELECT outcome, detail FROM training_runs WHERE kind = 'backbone'"
    )
    assert runs[0][0] == "failed" and "out of memory (pretend)" in runs[0][1]
    assert not list((trained.data_dir.root / "models").glob("backbones/*"))


async def test_a_better_encoder_replaces_the_old_one_everywhere(
    trained: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real fine-tune in a child process; the comparison is forced to favour it, so
    this checks what promotion does: new heads, FAISS, embeddings, start-up model."""
    real_weighted = bot.backbone_compare.weighted

    def favour_new(comparisons: list) -> tuple[float | None, float | None, int]:  # type: ignore[type-arg]
        old, new, n = real_weighted(comparisons)
        assert old is not None and new is not None and n > 0
        return 0.5, 0.9, n

    monkeypatch.setattr(bot.backbone_compare, "weighted", favour_new)
    for seed in (40, 41):  # person 1 sends two pictures without voting on them
        await _send_red(trained, f"unvoted{seed}", seed)
    old_version = trained.encoder.embedder.version
    outcome = await trained.make_backbone_tuner(config=FAST).run("test")
    assert outcome.promoted, outcome
    new_version = trained.encoder.embedder.version
    assert new_version != old_version and new_version.startswith("v1@")
    _, encoders = await snapshot(trained)
    assert encoders == {new_version}  # every retained image re-embedded; old vectors dropped
    n_images = await trained.store.db.fetch_all("SELECT COUNT(*) FROM images")
    n_vectors = await trained.store.db.fetch_all("SELECT COUNT(*) FROM embeddings")
    assert n_images[0][0] == n_vectors[0][0] == 22
    for user_id, unvoted in ((1, 2), (2, 0)):
        head = await trained.store.models.active_model(user_id)
        assert head is not None and head.encoder_version == new_version and head.version == 2
        assert trained.indexes.liked.count(user_id) == 10  # FAISS rebuilt for the new encoder
        # trained as a regular retrain is: the unvoted pictures shaped its f-space
        info = TasteHead.load(trained.data_dir.path(head.file_path)).info()
        assert info["n_unlabeled"] == unvoted, info
    backbone = await trained.store.models.active_global("backbone")
    assert backbone is not None and backbone.version == 1
    assert await bot.backbone.model_to_load(trained.settings) == str(
        trained.data_dir.path(backbone.file_path)
    )

    async def download() -> bytes:
        return coloured(99, red=True)

    scored = await trained.scoring.score_image(
        IncomingImage(PEOPLE[0], "1", "new", None, None), download
    )
    assert isinstance(scored, Scored) and scored.model_version == 2


async def test_fine_tuning_needs_retained_images(trained: Services) -> None:
    trained.settings = trained.settings.model_copy(update={"retain_images": False})
    tuner = trained.make_backbone_tuner(config=FAST)
    outcome = await tuner.run("test")
    assert outcome.version is None and "RETAIN_IMAGES is off" in outcome.reason


async def _send_red(service: Services, key: str, seed: int) -> Scored:
    async def download() -> bytes:
        return coloured(seed, red=True)

    out = await service.scoring.score_image(
        IncomingImage(PEOPLE[0], "1", key, None, None), download
    )
    assert isinstance(out, Scored)
    return out


async def test_an_image_sent_during_a_promoted_fine_tune_keeps_its_vote(
    trained: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_weighted = bot.backbone_compare.weighted
    monkeypatch.setattr(bot.backbone_compare, "weighted", lambda c: (0.5, 0.9, real_weighted(c)[2]))
    real_compare = BackboneTuner._compare
    sent: list[int] = []

    async def compare_while_person_1_votes(self, *args):  # type: ignore[no-untyped-def]
        out = await _send_red(trained, "during", 500)  # after the re-embedding pass
        await trained.votes.record_vote(PEOPLE[0], out.submission_id, Vote.SUPER_LIKE)
        sent.append(out.submission_id)
        return await real_compare(self, *args)

    monkeypatch.setattr(BackboneTuner, "_compare", compare_while_person_1_votes)
    before = len(await trained.store.votes.labelled_embeddings(1, trained.encoder.embedder.version))
    outcome = await trained.make_backbone_tuner(config=FAST, runner=degenerate_runner).run("test")
    assert outcome.promoted, outcome
    after = await trained.store.votes.labelled_embeddings(1, trained.encoder.embedder.version)
    assert len(after) == before + 1  # its vector under the new encoder: still trained on
    assert await trained.scoring.score_for(PEOPLE[0], sent[0]) is not None


async def test_a_rejected_fine_tune_leaves_a_head_trained_right_after_it(
    trained: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = trained.store
    real_drop = store.images.drop_embeddings

    async def drop_then_retrain(version: str) -> int:
        n = await real_drop(version)
        if version != trained.encoder.embedder.version:  # the rejected encoder's: the lock is free
            out = await _send_red(trained, "x1", 600)
            await trained.votes.record_vote(PEOPLE[0], out.submission_id, Vote.LIKE)
            await trained.retraining.retrain_user(1, "schedule")
        return n

    monkeypatch.setattr(store.images, "drop_embeddings", drop_then_retrain)
    outcome = await trained.make_backbone_tuner(config=FAST, runner=degenerate_runner).run("test")
    assert not outcome.promoted
    rows = await store.db.fetch_all(
        "SELECT file_path FROM model_versions WHERE owner_user_id = 1 AND kind = 'head'"
    )
    assert len(rows) == 2 and all(trained.data_dir.path(r[0]).exists() for r in rows)


async def test_a_shutdown_during_the_comparison_removes_what_the_run_made(
    trained: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    comparing = asyncio.Event()

    async def slow_compare(self, *args):  # type: ignore[no-untyped-def]
        comparing.set()
        await asyncio.sleep(3600)  # a long comparison: many people

    monkeypatch.setattr(BackboneTuner, "_compare", slow_compare)
    before = await snapshot(trained)
    tuner = trained.backbone = trained.make_backbone_tuner(config=FAST, runner=degenerate_runner)
    run = asyncio.create_task(tuner.run("schedule"))
    await comparing.wait()  # re-embedded by now: the new encoder's vectors are stored
    assert len((await snapshot(trained))[1]) == 2
    await trained.drain(timeout=10)  # what the runner does on SIGTERM, before closing
    assert run.cancelled()
    assert await snapshot(trained) == before  # no new model row, no new encoder's vectors
    assert not (trained.data_dir.root / "models" / "backbones" / "v1").exists()
    [(outcome, detail)] = await trained.store.db.fetch_all(
        "SELECT outcome, detail FROM training_runs WHERE kind = 'backbone'"
    )
    assert (outcome, detail) == ("failed", "stopped at shutdown")


async def test_a_run_after_a_crash_removes_what_the_crashed_run_left(
    trained: Services,
) -> None:
    leftover = trained.data_dir.root / "models" / "backbones" / "v1"
    leftover.mkdir(parents=True)  # a run killed after its child finished
    (leftover / "config.json").write_text("{}")
    await trained.store.images.put_embeddings(
        "v1@dead", [(1, np.ones(16, np.float32).tobytes())], 16
    )
    outcome = await trained.make_backbone_tuner(config=FAST, runner=degenerate_runner).run("test")
    assert outcome.version == 1 and not outcome.promoted, outcome  # not FileExistsError
    _, encoders = await snapshot(trained)
    assert encoders == {trained.encoder.embedder.version}


def test_an_image_held_out_for_anyone_is_not_fine_tuned_on(tmp_path: Path) -> None:
    from domain import RetainedVote
    from learner.training import is_holdout
    from storage.files import DataDir

    held = next(i for i in range(1, 100) if is_holdout(i))
    kept = [i for i in range(1, 100) if not is_holdout(i)][:2]
    votes = [
        RetainedVote(1, held, Vote.LIKE, "images/meme.png"),  # Alice's, held out
        RetainedVote(2, kept[0], Vote.LIKE, "images/meme.png"),  # Bob's, of the same picture
        RetainedVote(2, kept[1], Vote.DISLIKE, "images/cat.png"),
    ]
    examples = bot.backbone_compare.training_examples(votes, DataDir(tmp_path))
    assert [(e.image_path.name, e.person) for e in examples] == [("cat.png", 2)]


async def _head_files(service: Services) -> set[str]:
    """Head files on disk; the comparison's new heads used to stay after a failed run, with
    no row naming them, so /forget missed them."""
    heads = service.data_dir.path("models/heads")
    return {str(p.relative_to(service.data_dir.root)) for p in heads.rglob("*.npz")}


async def test_a_comparison_that_fails_halfway_leaves_no_head_file(
    trained: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = bot.backbone_compare.train_and_compare
    calls: list[int] = []

    def fails_for_the_second_person(*args):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 3:  # person 1's two heads are done, and the new one saved
            raise np.linalg.LinAlgError("pretend")
        return real(*args)

    monkeypatch.setattr(bot.backbone_compare, "train_and_compare", fails_for_the_second_person)
    outcome = await trained.make_backbone_tuner(config=FAST, runner=degenerate_runner).run("test")
    assert not outcome.promoted and "pretend" in outcome.reason and len(calls) == 3
    assert await _head_files(trained) == {"models/heads/1/v1.npz", "models/heads/2/v1.npz"}


def _favour_new(monkeypatch: pytest.MonkeyPatch) -> None:
    real_weighted = bot.backbone_compare.weighted
    monkeypatch.setattr(bot.backbone_compare, "weighted", lambda c: (0.5, 0.9, real_weighted(c)[2]))


async def test_a_promotion_that_fails_in_the_switch_records_nothing_active(
    trained: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    _favour_new(monkeypatch)
    before = await snapshot(trained)

    async def broken(*args: object) -> list[tuple[int, str]]:
        raise OSError("disk I/O error")

    monkeypatch.setattr(trained.store.images, "retained_images_missing", broken)
    outcome = await trained.make_backbone_tuner(config=FAST, runner=degenerate_runner).run("test")
    assert not outcome.promoted and "disk I/O error" in outcome.reason
    assert await snapshot(trained) == before  # the old encoder and heads, as served
    assert (await _send_red(trained, "after", 700)).model_version == 1  # its head, not the prior
    assert await _head_files(trained) == {"models/heads/1/v1.npz", "models/heads/2/v1.npz"}


async def test_a_cancel_while_the_promotion_commits_keeps_the_promoted_model(
    trained: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    _favour_new(monkeypatch)
    real_add = trained.store.models.add_backbone_version

    async def committed_then_cancelled(*args: object, **kwargs: object) -> object:
        await real_add(*args, **kwargs)  # aiosqlite runs the COMMIT even if its awaiter
        raise asyncio.CancelledError  # was cancelled (drain at that moment)

    monkeypatch.setattr(trained.store.models, "add_backbone_version", committed_then_cancelled)
    with pytest.raises(asyncio.CancelledError):
        await trained.make_backbone_tuner(config=FAST, runner=degenerate_runner).run("schedule")
    active = await trained.store.models.active_global("backbone")
    assert active is not None and trained.data_dir.path(active.file_path).exists()
    # The next start serves it, with a vector for every image.
    _, encoders = await snapshot(trained)
    assert active.encoder_version in encoders
    assert (
        await trained.store.images.retained_images_missing(
            trained.encoder.embedder.version, active.encoder_version
        )
        == []
    )


async def test_a_head_of_the_encoder_before_a_fine_tune_is_not_restored(
    trained: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rollback used to say done: v1 then never scored (its encoder's embeddings are
    # dropped), so the person got the cold-start prior while /stats named v1.
    _favour_new(monkeypatch)
    outcome = await trained.make_backbone_tuner(config=FAST, runner=degenerate_runner).run("test")
    assert outcome.promoted, outcome
    listing = await trained.admin.models_of("telegram", "1")
    assert listing is not None and listing.other_encoder == frozenset({1})
    lines = admin_text.models_text("1", listing).split("\n")
    assert lines[1].startswith("v1 retired (other CLIP):") and lines[2].startswith("v2 active:")
    assert await trained.admin.rollback("telegram", "1", 1) is Rollback.OTHER_ENCODER
    active = await trained.store.models.active_model(1)
    assert active is not None and active.version == 2
    assert (await _send_red(trained, "after", 700)).model_version == 2


async def test_a_person_whose_held_out_votes_cannot_rank_gets_a_head_on_the_new_encoder(
    trained: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Their held-out votes are all likes, so they cannot take part in the comparison; a
    promotion used to leave them only a head of the old encoder, scored by the cold-start
    prior until their next retrain."""
    third = Person("telegram", "3")
    for seed in range(50, 62):
        red = seed % 2 == 0

        async def download(data: bytes = coloured(seed, red)) -> bytes:
            return data

        out = await trained.scoring.score_image(
            IncomingImage(third, "3", str(seed), None, None), download
        )
        assert isinstance(out, Scored)
        liked = red or is_holdout(out.submission_id)
        await trained.votes.record_vote(
            third, out.submission_id, Vote.LIKE if liked else Vote.DISLIKE
        )
    [retrained] = await trained.retraining.retrain_due_heads(min_new_votes=1, trigger="test")
    assert retrained.promoted and retrained.user.id == 3
    _favour_new(monkeypatch)
    outcome = await trained.make_backbone_tuner(config=FAST, runner=degenerate_runner).run("test")
    assert outcome.promoted and outcome.people == 2, outcome  # person 3 did not vote
    active = await trained.store.models.active_model(3)
    assert active is not None and active.version == 2, active
    assert active.encoder_version == trained.encoder.embedder.version
    assert active.holdout_size > 0 and active.train_size > 0
    assert (await trained.store.models.active_model(1)) is not None


async def test_a_worker_switches_to_a_fine_tune_a_trainer_promoted_without_a_restart(
    trained: Services, encoder: ClipImageEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    _favour_new(monkeypatch)
    worker_settings = trained.settings.model_copy(update={"role": "worker"})
    worker = await Services.open(worker_settings, encoder)
    try:
        old_version = worker.encoder_version
        assert not await follow_backbone(worker)  # nothing promoted: nothing to do
        outcome = await trained.make_backbone_tuner(config=FAST).run("test")
        assert outcome.promoted, outcome
        new_version = trained.encoder_version
        # Scored here with the old encoder after the trainer re-embedded everything.
        meanwhile = await _send_red(worker, "meanwhile", 77)
        # The person's active head is now the new encoder's: not usable with the old one.
        assert meanwhile.model_version is None

        assert await follow_backbone(worker)
        assert worker.encoder_version == new_version != old_version
        [(image_id,)] = await worker.store.db.fetch_all(
            "SELECT image_id FROM submissions WHERE message_id = 'meanwhile'"
        )
        embedded = await worker.store.db.fetch_all(
            "SELECT 1 FROM embeddings WHERE image_id = ? AND encoder_version = ?",
            (image_id, new_version),
        )
        assert embedded  # the worker embedded what it scored meanwhile
        assert worker.indexes.liked.count(1) == 10  # its FAISS indexes are the new encoder's
        after = await _send_red(worker, "after", 78)
        assert after.model_version == 2  # the head the trainer made for the new encoder
        assert not await follow_backbone(worker)  # once
    finally:
        await worker.close()
