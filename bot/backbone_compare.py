"""The fine-tune's evidence: which votes the encoder may learn from, and per person a head
on the old and one on the new encoder, scored on the same held-out votes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bot.retraining import new_head_model, vote_arrays
from bot.text_features import TextFeatures
from domain import NewModel, RetainedVote
from learner.encoder import ClipImageEncoder
from learner.finetune import FinetuneExample
from learner.images import ImageRejected, decode_image
from learner.training import is_holdout, train_and_compare, trainable
from storage.files import DataDir
from storage.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PersonComparison:
    """One person's heads on the two encoders. The AUCs are None when their held-out votes
    cannot rank images (none, or all of one kind): the new head is kept, so a promotion
    leaves them a head on the new encoder, but it does not vote."""

    user_id: int
    holdout: int
    old_auc: float | None
    new_auc: float | None
    head: NewModel


def training_examples(votes: Sequence[RetainedVote], data_dir: DataDir) -> list[FinetuneExample]:
    """The votes the encoder may learn from: not held out, and not on an image that is held
    out for anyone. One picture sent by two people (a group, a meme) has two submissions,
    one of which may be held out: training on the other would let the new encoder see the
    held-out image, and favour it in the comparison."""
    held_out = {v.file_path for v in votes if is_holdout(v.submission_id)}
    return [
        FinetuneExample(data_dir.path(v.file_path), v.user_id, v.vote.liked, v.vote.weight)
        for v in votes
        if v.file_path not in held_out
    ]


async def compare_heads(
    store: Store,
    data_dir: DataDir,
    text: TextFeatures,
    min_votes: int,
    old_version: str,
    new_version: str,
    revision: int,
    written: list[Path],
) -> list[PersonComparison]:
    """Per person: a head on the old and one on the new embeddings, same votes, same
    holdout (only the new one where the held-out votes cannot rank). The new heads'
    files are appended to ``written`` as they are saved."""
    comparisons = []
    for user_id in await store.votes.users_with_votes():
        old = await store.votes.labelled_embeddings(user_id, old_version)
        new = await store.votes.labelled_embeddings(user_id, new_version)
        shared = {v.submission_id for v in old} & {v.submission_id for v in new}
        old = [v for v in old if v.submission_id in shared]
        new = [v for v in new if v.submission_id in shared]
        ids, liked, weights = vote_arrays(new)
        if trainable(ids, liked, min_votes) is not None:
            continue
        old_x = await text.training_vectors(old)
        new_x = await text.training_vectors(new)
        # The unvoted images too, as a regular retrain: the new head becomes the person's
        # active one on promotion. (An image sent during the re-embedding may be in the
        # old set only; it shapes the graph, while both heads are scored on the same votes.)
        old_u = await text.unvoted_vectors(user_id, old_version)
        new_u = await text.unvoted_vectors(user_id, new_version)
        # No crowd prior on either side: the crowd model is of the old encoder's vectors, and
        # the comparison is of the encoders alone.
        new_result = await asyncio.to_thread(
            train_and_compare, ids, new_x, liked, weights, new_u, None
        )
        old_auc = new_auc = None
        if new_result.candidate.auc is not None:
            old_result = await asyncio.to_thread(
                train_and_compare, ids, old_x, liked, weights, old_u, None
            )
            if old_result.candidate.auc is not None:
                old_auc, new_auc = old_result.candidate.auc, new_result.candidate.auc
        head_version = await store.models.next_model_version(user_id)
        relpath = data_dir.head_relpath(user_id, head_version)
        head_path = data_dir.path(relpath)
        head_path.parent.mkdir(parents=True, exist_ok=True)
        written.append(head_path)  # before saving: a save that fails leaves part of one
        await asyncio.to_thread(new_result.head.save, head_path)
        head = new_head_model(user_id, head_version, relpath, new_version, new_result, revision)
        comparisons.append(
            PersonComparison(user_id, new_result.candidate.size, old_auc, new_auc, head)
        )
    return comparisons


def weighted(comparisons: list[PersonComparison]) -> tuple[float | None, float | None, int]:
    """(old AUC, new AUC, held-out votes), averaged over the people whose held-out votes
    rank images, weighted by how many they have."""
    pairs = [
        (c.old_auc, c.new_auc, c.holdout)
        for c in comparisons
        if c.old_auc is not None and c.new_auc is not None
    ]
    total = sum(h for _, _, h in pairs)
    if total == 0:
        return None, None, 0
    old = sum(o * h for o, _, h in pairs) / total
    new = sum(n * h for _, n, h in pairs) / total
    return old, new, total


def decision(
    old_auc: float | None, new_auc: float | None, comparisons: list[PersonComparison]
) -> tuple[bool, str]:
    """Promote the new encoder only if its held-out AUC is higher; and why, in words."""
    if new_auc is None or old_auc is None:
        return (
            False,
            "no person has held-out votes of both kinds, so the encoders cannot be compared",
        )
    if new_auc > old_auc:
        return (
            True,
            f"holdout AUC {new_auc:.3f} > {old_auc:.3f} over {compared(comparisons)} people",
        )
    return False, f"holdout AUC {new_auc:.3f} ≤ current {old_auc:.3f}: kept the current encoder"


def compared(comparisons: list[PersonComparison]) -> int:
    return sum(c.new_auc is not None for c in comparisons)


def embed_files(
    encoder: ClipImageEncoder, data_dir: DataDir, batch: list[tuple[int, str]]
) -> list[tuple[int, bytes]]:
    """(image id, vector bytes) of retained image files; unreadable ones are skipped."""
    ids, images = [], []
    for image_id, relpath in batch:
        try:
            data = data_dir.path(relpath).read_bytes()
            images.append(decode_image(data, target_size=encoder.input_size).image)
            ids.append(image_id)
        except (OSError, ImageRejected):
            log.warning("retained image %s is missing or unreadable; not re-embedded", relpath)
    if not images:
        return []
    vectors = encoder.embed(images)
    return [
        (i, np.ascontiguousarray(v, np.float32).tobytes())
        for i, v in zip(ids, vectors, strict=True)
    ]


Progress = Callable[[str], Coroutine[Any, Any, None]]
REEMBED_BATCH = 32


async def _quiet(_: str) -> None:
    """Progress nobody watches."""


async def reembed(
    store: Store,
    data_dir: DataDir,
    encoder: ClipImageEncoder,
    progress: Progress = _quiet,
    images: list[tuple[int, str]] | None = None,
) -> None:
    """Embed ``images`` (default: every retained image) with ``encoder``, in batches, off
    the event loop."""
    if images is None:
        images = await store.images.retained_images()
    for start in range(0, len(images), REEMBED_BATCH):
        batch = images[start : start + REEMBED_BATCH]
        vectors = await asyncio.to_thread(embed_files, encoder, data_dir, batch)
        await store.images.put_embeddings(encoder.version, vectors, encoder.dim)
        await progress(f"Re-embedding images: {start + len(batch)}/{len(images)}")
