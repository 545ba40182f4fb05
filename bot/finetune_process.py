"""Run backbone fine-tuning (``learner.finetune.finetune``) in a separate process.

Fine-tuning takes minutes to hours of every core; it must never run in the bot's event loop
or its threads. :class:`FinetuneJob` starts it in a ``spawn``-context process (no forked copy
of the bot's threads, sockets or SQLite connections), streams its progress back over a pipe,
and turns every way it can end into either a :class:`FinetuneResult` or :class:`FinetuneFailed`.

    job = FinetuneJob(settings.clip_model, examples, out_dir, FinetuneConfig())
    await job.start()
    async for p in job.progress():      # or FinetuneJob(..., on_progress=callback)
        log.info("fine-tuning: %s", p.describe())
    result = await job.wait()           # FinetuneFailed if it raised, was killed or cancelled

The child writes only to ``partial_dir(out_dir)`` and renames it to ``out_dir`` when done, so a
crash or kill leaves the active models untouched; the job then removes whatever it left.
Platform-free: no chat library is imported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import shutil
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Protocol

from learner.finetune import (
    FinetuneConfig,
    FinetuneExample,
    FinetuneProgress,
    FinetuneResult,
    finetune,
    partial_dir,
)

__all__ = ["FinetuneFailed", "FinetuneJob", "FinetuneRunner"]

PROGRESS_INTERVAL_S = 0.25

# Messages from the child: ("progress", FinetuneProgress) | ("result", FinetuneResult)
# | ("error", (one line, traceback)).


class FinetuneRunner(Protocol):
    """The signature of ``learner.finetune.finetune`` (tests pass stand-ins; must be picklable)."""

    def __call__(
        self,
        model_dir: str,
        examples: Sequence[FinetuneExample],
        out_dir: Path,
        config: FinetuneConfig,
        progress: Callable[[FinetuneProgress], None],
        should_stop: Callable[[], bool],
    ) -> FinetuneResult: ...


class FinetuneFailed(Exception):
    """The run produced no model: it raised, was killed, exited non-zero, or was cancelled."""

    def __init__(
        self,
        error: str,
        *,
        detail: str = "",
        exitcode: int | None = None,
        cancelled: bool = False,
    ) -> None:
        super().__init__(error)
        self.error = error  # one line, for training_runs.detail and an admin's chat
        self.detail = detail  # the child's traceback, for the log
        self.exitcode = exitcode  # negative = killed by that signal (POSIX)
        self.cancelled = cancelled


class FinetuneJob:
    """One fine-tuning run in a child process, driven from asyncio without blocking it.

    Use each job once: ``await start()``, then any of ``progress()``, ``latest``, ``cancel()``
    and ``await wait()``. Every method is called from the event loop's thread; a private
    reader thread turns the child's messages into loop callbacks.
    """

    def __init__(
        self,
        model_dir: str,
        examples: Sequence[FinetuneExample],
        out_dir: Path,
        config: FinetuneConfig,
        *,
        on_progress: Callable[[FinetuneProgress], None] | None = None,
        cancel_grace_s: float = 30.0,
        niceness: int = 10,
        runner: FinetuneRunner = finetune,
    ) -> None:
        self.model_dir = model_dir
        self.examples = list(examples)
        self.out_dir = Path(out_dir)
        self.config = config
        self.on_progress = on_progress  # called on the event loop for every progress message
        self.cancel_grace_s = cancel_grace_s  # after cancel(): wait this long, then terminate
        self.niceness = niceness  # the child yields the CPU to the bot (POSIX only)
        self.runner = runner
        self.latest: FinetuneProgress | None = None
        self._ctx = multiprocessing.get_context("spawn")
        self._stop = self._ctx.Event()
        self._process: BaseProcess | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._finished: asyncio.Future[FinetuneResult] | None = None
        self._subscribers: list[asyncio.Queue[FinetuneProgress | None]] = []
        self._cancelled = False
        self._kill_timer: threading.Timer | None = None
        self._reaped = threading.Event()  # set by the reader thread once the child is joined

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def done(self) -> bool:
        return self._finished is not None and self._finished.done()

    async def start(self) -> None:
        """Start the child process (spawning takes a moment, so it happens on a thread)."""
        if self._process is not None:
            raise RuntimeError("a FinetuneJob runs once")
        if self.out_dir.exists():
            raise FileExistsError(f"{self.out_dir} already exists")
        loop = asyncio.get_running_loop()
        receiver, sender = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=_child_main,
            args=(
                self.runner,
                self.model_dir,
                self.examples,
                self.out_dir,
                self.config,
                sender,
                self._stop,
                self.niceness,
            ),
            name=f"finetune-{self.out_dir.name}",
            daemon=True,  # never outlive the bot
        )
        self._process = process
        try:
            await asyncio.to_thread(process.start)
        except BaseException:
            receiver.close()
            raise
        finally:
            sender.close()  # the child holds the only write end: EOF on recv means it is gone
        self._loop = loop
        self._finished = loop.create_future()
        threading.Thread(
            target=self._read, args=(receiver, process), name="finetune-reader", daemon=True
        ).start()

    async def progress(self) -> AsyncIterator[FinetuneProgress]:
        """Every progress message from now until the run ends (several readers may listen)."""
        if self._finished is None:
            raise RuntimeError("start() the job first")
        if self._finished.done():
            return
        queue: asyncio.Queue[FinetuneProgress | None] = asyncio.Queue()
        self._subscribers.append(queue)
        try:
            while (item := await queue.get()) is not None:
                yield item
        finally:
            self._subscribers.remove(queue)

    async def wait(self) -> FinetuneResult:
        """The run's result; raises :class:`FinetuneFailed` if it produced no model."""
        if self._finished is None:
            raise RuntimeError("start() the job first")
        # shield: a caller cancelled while waiting must not cancel the run's outcome.
        return await asyncio.shield(self._finished)

    def cancel(self) -> None:
        """Ask the child to stop at its next step; terminate it if it has not after the grace."""
        if self._finished is None or self.done or self._cancelled:
            return
        self._cancelled = True
        self._stop.set()
        self._kill_timer = threading.Timer(self.cancel_grace_s, self._terminate)
        self._kill_timer.daemon = True
        self._kill_timer.start()

    def _terminate(self) -> None:
        process = self._process
        if process is None or self._reaped.is_set():
            return
        process.terminate()
        # Only the reader thread waits for the child: two threads in waitpid() race for its
        # exit status, and the loser sees exitcode None.
        if not self._reaped.wait(5.0):
            process.kill()

    # -- the reader thread ---------------------------------------------------------------------

    def _read(self, receiver: Connection, process: BaseProcess) -> None:
        """Forward the child's messages to the loop until it exits; then settle the outcome."""
        result: FinetuneResult | None = None
        error: tuple[str, str] | None = None
        try:
            while True:
                try:
                    kind, payload = receiver.recv()
                except EOFError:
                    break
                except Exception as exc:  # a message cut short by a kill, or unpicklable
                    error = error or (f"lost contact with the fine-tuning process: {exc!r}", "")
                    break
                if kind == "progress":
                    self._call_soon(self._on_progress, payload)
                elif kind == "result":
                    result = payload
                elif kind == "error":
                    error = payload
        finally:
            receiver.close()
            process.join()
            self._reaped.set()
            if self._kill_timer is not None:
                self._kill_timer.cancel()
        outcome = self._outcome(result, error, process.exitcode)
        if not isinstance(outcome, FinetuneResult):
            # Nothing half-written stays behind. out_dir did not exist at start(), so anything
            # there now is this run's (renamed into place just before it died).
            shutil.rmtree(partial_dir(self.out_dir), ignore_errors=True)
            if result is None:
                shutil.rmtree(self.out_dir, ignore_errors=True)
        self._call_soon(self._settle, outcome)

    def _outcome(
        self, result: FinetuneResult | None, error: tuple[str, str] | None, exitcode: int | None
    ) -> FinetuneResult | FinetuneFailed:
        if result is not None and exitcode == 0:
            return result
        if error is not None:
            return FinetuneFailed(
                error[0], detail=error[1], exitcode=exitcode, cancelled=self._cancelled
            )
        if self._cancelled:
            return FinetuneFailed(
                "cancelled; the fine-tuning process had to be terminated",
                exitcode=exitcode,
                cancelled=True,
            )
        if exitcode is not None and exitcode < 0:
            return FinetuneFailed(
                f"the fine-tuning process was killed by signal {-exitcode}", exitcode=exitcode
            )
        return FinetuneFailed(
            f"the fine-tuning process exited with code {exitcode} without a result",
            exitcode=exitcode,
        )

    def _call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening
            self._loop.call_soon_threadsafe(callback, *args)

    # -- on the event loop -----------------------------------------------------------------------

    def _on_progress(self, p: FinetuneProgress) -> None:
        self.latest = p
        for queue in self._subscribers:
            queue.put_nowait(p)
        if self.on_progress is not None:
            self.on_progress(p)

    def _settle(self, outcome: FinetuneResult | FinetuneFailed) -> None:
        assert self._finished is not None
        if isinstance(outcome, FinetuneFailed):
            self._finished.set_exception(outcome)
            # Mark it retrieved: a caller that only watches progress() must not get
            # "Future exception was never retrieved" in the log.
            self._finished.exception()
        else:
            self._finished.set_result(outcome)
        for queue in self._subscribers:
            queue.put_nowait(None)


def _child_main(
    runner: FinetuneRunner,
    model_dir: str,
    examples: Sequence[FinetuneExample],
    out_dir: Path,
    config: FinetuneConfig,
    sender: Connection,
    stop: Any,  # multiprocessing.synchronize.Event
    niceness: int,
) -> None:
    """The child process: run, report, exit non-zero on any error."""
    if niceness and hasattr(os, "nice"):
        with contextlib.suppress(OSError):
            os.nice(niceness)

    last: list[Any] = [None, 0.0]  # (phase, epoch) and time of the last message sent

    def progress(p: FinetuneProgress) -> None:
        # Every phase and epoch boundary and the last step go through; other steps at most
        # PROGRESS_INTERVAL_S apart, so tiny steps cannot flood the pipe or the event loop.
        key, now = (p.phase, p.epoch), time.monotonic()
        if key != last[0] or p.step in (0, p.steps) or now - last[1] >= PROGRESS_INTERVAL_S:
            last[:] = [key, now]
            sender.send(("progress", p))

    try:
        result = runner(model_dir, examples, out_dir, config, progress, stop.is_set)
    except BaseException as exc:
        line = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        with contextlib.suppress(Exception):
            sender.send(("error", (line, traceback.format_exc())))
        sender.close()
        raise SystemExit(1) from None
    sender.send(("result", result))
    sender.close()
