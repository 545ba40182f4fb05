"""The trainer's loop: claim a job, check it is still due, run it, mark it done.

One job at a time (training uses every core it is given). While a job runs its lease is
renewed, so only a trainer that died (or hung past its lease) loses it to another. A job
that fails is given back to the queue, to be tried again up to JOB_MAX_ATTEMPTS claims.
A job whose work another trainer already did (the person has no new votes left, the crowd
model or fine-tune is not due) finishes as done without training: re-running a job whose
model was promoted before its trainer died promotes nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable

from bot.backbone import BackboneTuner
from bot.crowd import CrowdTraining
from bot.retraining import RetrainService
from storage.jobs import Job
from storage.store import Store

log = logging.getLogger(__name__)

TRAINING_KINDS = ("head", "crowd", "finetune")


def process_name(role: str) -> str:
    """Who holds a claim, in logs and the jobs table: host, process id, role."""
    return f"{socket.gethostname()}:{os.getpid()}:{role}"


class JobRunner:
    def __init__(
        self,
        *,
        store: Store,
        retraining: RetrainService,
        crowd_training: CrowdTraining,
        backbone: BackboneTuner,
        name: str,
        lease_seconds: float,
        max_attempts: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.retraining = retraining
        self.crowd_training = crowd_training
        self.backbone = backbone
        self.name = name
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.clock = clock

    async def run_once(self) -> Job | None:
        """Claim one training job and run it; the job as claimed, or None if none waited."""
        job = await self.store.jobs.claim(
            self.name,
            kinds=TRAINING_KINDS,
            now=self.clock(),
            lease_seconds=self.lease_seconds,
            max_attempts=self.max_attempts,
        )
        if job is None:
            return None
        renewing = asyncio.create_task(self._renew(job))
        try:
            detail = await self.run(job)
        except Exception as error:
            log.exception("job %d (%s) failed on attempt %d", job.id, job.kind, job.attempts)
            await self._failed(job, f"{type(error).__name__}: {error}")
        else:
            if not await self.store.jobs.finish(job.id, self.name, now=self.clock(), detail=detail):
                log.warning("job %d finished after its lease was lost", job.id)
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
        return job

    async def _failed(self, job: Job, detail: str) -> None:
        if job.attempts >= self.max_attempts:
            await self.store.jobs.finish(
                job.id, self.name, now=self.clock(), detail=detail, ok=False
            )
        else:
            await self.store.jobs.release(job.id, self.name, detail=detail)

    async def _renew(self, job: Job) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            held = await self.store.jobs.renew(job.id, self.name, self.clock() + self.lease_seconds)
            if not held:
                log.warning("lost the lease of job %d; another trainer may take it", job.id)
                return

    async def run(self, job: Job) -> str:
        """Do the job's work if it is still due; what happened, for the job's detail."""
        if job.kind == "head":
            assert job.user_id is not None, "a head job names its person"
            return await self._head(job.user_id)
        if job.kind == "crowd":
            why_not = await self.crowd_training.why_not_due()
            if why_not is not None:
                return f"not due: {why_not}"
            return (await self.crowd_training.retrain("job")).reason
        if job.kind == "finetune":
            why_not = await self.backbone.why_not_due()
            if why_not is not None:
                return f"not due: {why_not}"
            return (await self.backbone.run("job")).reason
        raise ValueError(f"a trainer does not run {job.kind!r} jobs")

    async def _head(self, user_id: int) -> str:
        due = await self.retraining.due_threshold(user_id)
        outcome = await self.retraining.retrain_user(user_id, "job", min_new_votes=due)
        if outcome is None:  # trained by an earlier attempt or another job, or forgotten
            return "not due: no new votes since the newest model"
        await self.retraining.announce(outcome)
        return outcome.reason

    async def run_forever(self, poll_seconds: float, stopping: asyncio.Event) -> None:
        """Run jobs until ``stopping``; wait ``poll_seconds`` whenever the queue is empty."""
        while not stopping.is_set():
            try:
                job = await self.run_once()
            except Exception:  # the database was busy or gone for a moment: try again
                log.exception("claiming a job failed")
                job = None
            if job is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), poll_seconds)
