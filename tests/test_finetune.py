"""Backbone fine-tuning: the two phases, saving, SupCon, and the child process around it.

The stand-in runners below run in spawned children, which import this module: its top-level
imports stay light (no transformers, no conftest), or each child would spend seconds on them.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from bot.finetune_process import FinetuneFailed, FinetuneJob
from learner.finetune import (
    METADATA_FILE,
    FinetuneConfig,
    FinetuneExample,
    FinetuneProgress,
    FinetuneResult,
    finetune,
    partial_dir,
)
from learner.finetune_trainer import supcon_loss

if TYPE_CHECKING:
    from learner.encoder import ClipImageEncoder

FAST = FinetuneConfig(
    head_epochs=2, encoder_epochs=1, batch_size=4, unfreeze_blocks=1, encoder_lr=1e-3, device="cpu"
)


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> list[FinetuneExample]:
    """Two people, 10 images; person 7 likes the even seeds, person 9 the odd ones."""
    from tests.conftest import image_bytes

    folder = tmp_path_factory.mktemp("images")
    out = []
    for seed in range(10):
        path = folder / f"{seed}.jpg"
        path.write_bytes(image_bytes(seed))
        out.append(FinetuneExample(path, 7, seed % 2 == 0))
        out.append(FinetuneExample(path, 9, seed % 2 == 1, 2.0 if seed % 2 else 1.0))
    return out


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def load_encoder(model_dir: Path) -> ClipImageEncoder:
    from learner.encoder import ClipImageEncoder

    return ClipImageEncoder(str(model_dir), device="cpu")


def digest(model_dir: Path) -> str:
    return load_encoder(model_dir).version.split("@")[1]


def test_heads_phase_leaves_the_encoder_bit_identical(
    clip_dir: Path, examples: list[FinetuneExample], tmp_path: Path
) -> None:
    seen: list[FinetuneProgress] = []
    config = FinetuneConfig(head_epochs=3, encoder_epochs=0, batch_size=4, device="cpu")
    result = finetune(str(clip_dir), examples, tmp_path / "out", config, progress=seen.append)

    before, after = weights(clip_dir), weights(tmp_path / "out")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert digest(tmp_path / "out") == digest(clip_dir)
    assert result.n_examples == 20 and result.people == (7, 9) and not result.stopped_early
    assert [h.phase for h in result.history] == ["heads"] * 3
    assert result.head_loss is not None and result.head_loss < math.log(2)  # heads learnt
    assert {p.phase for p in seen} == {"loading", "embedding", "heads", "saving", "done"}
    assert seen[-1].phase == "done"


def test_encoder_phase_changes_the_top_blocks_and_saves_a_new_version(
    clip_dir: Path, examples: list[FinetuneExample], tmp_path: Path
) -> None:
    config = replace(FAST, contrastive_weight=0.5)
    out = tmp_path / "v2"
    result = finetune(str(clip_dir), examples, out, config)

    before, after = weights(clip_dir), weights(out)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    top = "vision_model.encoder.layers.1."  # the tiny CLIP has two blocks; one is unfrozen
    assert any(k.startswith(top) for k in changed)
    assert "visual_projection.weight" in changed
    assert all(
        k.startswith((top, "vision_model.post_layernorm", "visual_projection")) for k in changed
    )
    # Loads through the same from_pretrained path, as a new version, and embeds.
    encoder = load_encoder(out)
    assert encoder.version.split("@")[1] != digest(clip_dir)
    assert encoder.version.startswith("v2@")
    vectors = encoder.embed([Image.open(examples[0].image_path)])
    assert vectors.shape == (1, 16) and abs(float((vectors**2).sum()) - 1) < 1e-5
    assert (out / METADATA_FILE).exists() and not partial_dir(out).exists()
    last = result.history[-1]
    assert last.phase == "encoder" and last.contrastive is not None and last.contrastive >= 0
    assert result.encoder_loss is not None and math.isfinite(result.encoder_loss)


def test_unfreezing_every_block_reaches_the_embeddings(
    clip_dir: Path, examples: list[FinetuneExample], tmp_path: Path
) -> None:
    config = replace(FAST, head_epochs=0, unfreeze_blocks=99)
    finetune(str(clip_dir), examples[:8], tmp_path / "out", config)
    before, after = weights(clip_dir), weights(tmp_path / "out")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "vision_model.embeddings.patch_embedding.weight" in changed
    assert "vision_model.encoder.layers.0.mlp.fc1.weight" in changed
    assert not any(k.startswith("text_model.") for k in changed)


def test_bf16_autocast_on_the_cpu_trains(
    clip_dir: Path, examples: list[FinetuneExample], tmp_path: Path
) -> None:
    config = replace(FAST, head_epochs=0, cpu_bf16=True)
    result = finetune(str(clip_dir), examples[:8], tmp_path / "out", config)
    assert result.encoder_loss is not None and math.isfinite(result.encoder_loss)
    after = weights(tmp_path / "out")["visual_projection.weight"]
    assert after.dtype == torch.float32  # autocast computes in bf16; the weights stay fp32
    assert not torch.equal(weights(clip_dir)["visual_projection.weight"], after)


def test_unreadable_images_are_skipped_and_none_at_all_is_an_error(
    clip_dir: Path, examples: list[FinetuneExample], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    bad = [FinetuneExample(broken, 7, True), FinetuneExample(tmp_path / "gone.jpg", 9, True)]
    config = FinetuneConfig(head_epochs=1, encoder_epochs=0, batch_size=4, device="cpu")
    result = finetune(str(clip_dir), examples[:4] + bad, tmp_path / "a", config)
    assert (result.n_examples, result.n_skipped) == (4, 2)
    with pytest.raises(ValueError, match="readable"):
        finetune(str(clip_dir), bad, tmp_path / "b", config)
    assert not (tmp_path / "b").exists() and not partial_dir(tmp_path / "b").exists()


def test_should_stop_ends_the_run_without_writing(
    clip_dir: Path, examples: list[FinetuneExample], tmp_path: Path
) -> None:
    polls = 0

    def stop_after_a_few() -> bool:
        nonlocal polls
        polls += 1
        return polls > 8  # inside the heads phase

    result = finetune(str(clip_dir), examples, tmp_path / "out", FAST, should_stop=stop_after_a_few)
    assert result.stopped_early and result.out_dir is None
    assert not (tmp_path / "out").exists() and not partial_dir(tmp_path / "out").exists()


def test_supcon_is_a_proper_nonnegative_loss() -> None:
    torch.manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(8, 5), dim=-1).requires_grad_(True)
    people = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2])
    liked = torch.tensor([1, 1, 0, 0, 1, 0, 0, 1])
    loss = supcon_loss(features, people, liked, temperature=0.1)
    loss.backward()
    assert math.isfinite(float(loss.detach())) and float(loss.detach()) >= 0
    assert features.grad is not None and torch.isfinite(features.grad).all()

    # By hand for one anchor: person 0, anchor 0, positive 1, contrast set {1, 2, 3}.
    f = features.detach()
    s = (f @ f.T) / 0.1
    l0 = -(s[0, 1] - torch.logsumexp(s[0, [1, 2, 3]], 0))
    l1 = -(s[1, 0] - torch.logsumexp(s[1, [0, 2, 3]], 0))
    l2 = -(s[2, 3] - torch.logsumexp(s[2, [0, 1, 3]], 0))
    l3 = -(s[3, 2] - torch.logsumexp(s[3, [0, 1, 2]], 0))
    l5 = -(s[5, 6] - torch.logsumexp(s[5, [4, 6]], 0))
    l6 = -(s[6, 5] - torch.logsumexp(s[6, [4, 5]], 0))
    # Anchors 4 (no other like of person 1) and 7 (alone) have no positive: left out.
    expected = torch.stack([l0, l1, l2, l3, l5, l6]).mean()
    assert torch.allclose(loss.detach(), expected, atol=1e-5)

    # Pulling same-label features together lowers it; no positive pairs at all gives 0.
    grouped = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.1], [1.0, -0.1], [-1.0, 0.1], [-1.0, -0.1]]), dim=-1
    )
    mixed = grouped[[0, 2, 1, 3]]
    two = torch.tensor([0, 0, 0, 0])
    assert supcon_loss(grouped, two, torch.tensor([1, 1, 0, 0]), 0.1) < supcon_loss(
        mixed, two, torch.tensor([1, 1, 0, 0]), 0.1
    )
    assert float(supcon_loss(grouped, torch.arange(4), torch.ones(4), 0.1)) == 0.0


# -- the child process --------------------------------------------------------------------------


def raise_runner(
    model_dir: str,
    examples: Sequence[FinetuneExample],
    out_dir: Path,
    config: FinetuneConfig,
    progress: Callable[[FinetuneProgress], None],
    should_stop: Callable[[], bool],
) -> FinetuneResult:
    progress(FinetuneProgress("loading", 0, 0, 0, 0, None, 0.0))
    raise RuntimeError("CUDA out of memory (pretend)")


def hang_runner(
    model_dir: str,
    examples: Sequence[FinetuneExample],
    out_dir: Path,
    config: FinetuneConfig,
    progress: Callable[[FinetuneProgress], None],
    should_stop: Callable[[], bool],
) -> FinetuneResult:
    """Reports, half-writes a model, then ignores should_stop forever."""
    partial_dir(out_dir).mkdir(parents=True)
    (partial_dir(out_dir) / "model.safetensors").write_bytes(b"half")
    progress(FinetuneProgress("encoder", 1, 1, 1, 9, 0.5, 0.0))
    while True:
        time.sleep(0.05)


async def test_job_runs_finetune_in_a_child_and_streams_progress(
    clip_dir: Path, examples: list[FinetuneExample], tmp_path: Path
) -> None:
    callbacks: list[FinetuneProgress] = []
    job = FinetuneJob(str(clip_dir), examples, tmp_path / "out", FAST, on_progress=callbacks.append)
    await job.start()
    assert job.pid is not None and job.pid != os.getpid()
    phases = [p.phase async for p in job.progress()]
    result = await asyncio.wait_for(job.wait(), 60)
    assert phases[0] == "loading" and phases[-1] == "done" and "encoder" in phases
    assert len(callbacks) == len(phases) and job.latest is not None and job.done
    assert result.out_dir == tmp_path / "out" and not result.stopped_early
    assert load_encoder(result.out_dir).version.startswith("out@")


async def test_a_child_that_raises_is_reported_failed(tmp_path: Path) -> None:
    job = FinetuneJob("unused", [], tmp_path / "out", FAST, runner=raise_runner)
    await job.start()
    with pytest.raises(FinetuneFailed) as failed:
        await asyncio.wait_for(job.wait(), 60)
    assert failed.value.error == "RuntimeError: CUDA out of memory (pretend)"
    assert "Traceback" in failed.value.detail and failed.value.exitcode == 1
    assert job.latest is not None and job.latest.phase == "loading"


async def test_a_killed_child_is_reported_failed_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = FinetuneJob("unused", [], out, FAST, runner=hang_runner)
    await job.start()
    async for _ in job.progress():
        break  # it is running and has half-written a model
    assert job.pid is not None
    os.kill(job.pid, signal.SIGKILL)
    with pytest.raises(FinetuneFailed, match="killed by signal 9") as failed:
        await asyncio.wait_for(job.wait(), 30)
    assert not failed.value.cancelled
    assert not out.exists() and not partial_dir(out).exists()


async def test_cancel_stops_cooperatively_then_terminates(
    clip_dir: Path, examples: list[FinetuneExample], tmp_path: Path
) -> None:
    # Cooperative: the real finetune sees should_stop and returns without saving. (Enough
    # heads epochs that the run is still going however late the cancel arrives.)
    long = replace(FAST, head_epochs=100_000)
    job = FinetuneJob(str(clip_dir), examples, tmp_path / "a", long)
    await job.start()
    async for p in job.progress():
        if p.phase == "heads":
            job.cancel()
    result = await asyncio.wait_for(job.wait(), 60)
    assert result.stopped_early and result.out_dir is None and not (tmp_path / "a").exists()

    # A child that ignores the request is terminated after the grace period.
    stubborn = FinetuneJob(
        "unused", [], tmp_path / "b", FAST, runner=hang_runner, cancel_grace_s=0.2
    )
    await stubborn.start()
    async for _ in stubborn.progress():
        break
    stubborn.cancel()
    with pytest.raises(FinetuneFailed, match="cancelled") as failed:
        await asyncio.wait_for(stubborn.wait(), 30)
    assert failed.value.cancelled and failed.value.exitcode == -signal.SIGTERM
    assert not partial_dir(tmp_path / "b").exists()
