"""Run the chat platforms on one event loop around one set of services.

The runner owns what the platforms share — the services (database, FAISS, CLIP) and the
retrain scheduler — and each platform only connects, receives and stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from bot.settings import Settings

if TYPE_CHECKING:  # importing the services loads torch; the runner is handed them
    from bot.roles import RoleTasks
    from bot.services import Services

log = logging.getLogger("bot")

OpenService = Callable[[], Awaitable["Services"]]
# SIGTERM to exit, even when a chat platform has stopped answering: what is committed is
# already on disk, so the last requests (confirming updates, replies in flight) are cut short.
SHUTDOWN_SECONDS = 3.5  # then closing the database and the interpreter's exit: ≤ 5 s in all


class Platform(Protocol):
    """One chat platform's adapter, as the runner drives it."""

    name: str

    async def connect(self) -> None:
        """Check the token (before CLIP loads, so a wrong token fails fast)."""

    async def start(self, services: Services) -> Awaitable[None] | None:
        """Attach the services and start receiving; may return what finishes if it dies."""

    async def stop(self) -> None:
        """Stop receiving and let handlers in flight finish."""


class ConnectFailed(RuntimeError):
    """A platform could not connect at startup: its network is unreachable or it refused
    the token. The message names the platform and the cause, in one line."""


def _without_tokens(text: str, settings: Settings) -> str:
    """``text`` with the bot tokens masked: PTB's InvalidToken message quotes the token."""
    for token in (settings.telegram_bot_token, settings.discord_bot_token):
        if token is not None and token.get_secret_value():
            text = text.replace(token.get_secret_value(), "<token>")
    return text


class SharedService:
    """Opens the services once, however many platforms ask for it."""

    def __init__(self, open_service: OpenService) -> None:
        self._open = open_service
        self._lock = asyncio.Lock()
        self.services: Services | None = None

    async def get(self) -> Services:
        async with self._lock:
            if self.services is None:
                self.services = await self._open()
            return self.services


async def serve(
    settings: Settings,
    shared: SharedService,
    platforms: Sequence[Platform],
    stop: asyncio.Event,
) -> None:
    """Connect every platform, open the services, start the scheduler, run until `stop`, stop.

    A platform whose connection dies for good (a revoked token, a missing privileged
    intent) stops everything, and its error is raised; one that cannot connect at all
    raises ConnectFailed.
    """
    started: list[Platform] = []
    role_tasks = None
    try:
        for platform in platforms:
            started.append(platform)
            try:
                await platform.connect()
            except Exception as error:  # the adapters' own errors: httpx, PTB, discord.py
                cause = _without_tokens(f"{type(error).__name__}: {error}", settings)
                raise ConnectFailed(f"{platform.name}: could not connect ({cause})") from error
        from bot.roles import start_role  # APScheduler, only once serving

        services = await shared.get()
        role_tasks = start_role(services, settings)
        watched: list[asyncio.Future[object]] = []
        for platform in platforms:
            done = await platform.start(services)
            if done is not None:
                watched.append(asyncio.ensure_future(done))
            log.info("%s: receiving", platform.name)
        stopping: asyncio.Future[object] = asyncio.ensure_future(stop.wait())
        finished, _ = await asyncio.wait([stopping, *watched], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        for future in finished - {stopping}:
            future.result()  # raises the platform's error
            raise RuntimeError("a platform stopped on its own")
    finally:
        await _shut_down(role_tasks, shared.services, started)


async def _shut_down(
    role_tasks: RoleTasks | None, services: Services | None, started: Sequence[Platform]
) -> None:
    """Order matters: no new jobs, let a retrain round stop between two people, stop
    receiving (handlers in flight finish, within the budget), then close the database. The
    scheduler is only paused until then: its shutdown cancels a job still running, mid-write."""
    deadline = asyncio.get_running_loop().time() + SHUTDOWN_SECONDS

    def left(share: float = 1.0) -> float:
        return max(0.1, (deadline - asyncio.get_running_loop().time()) * share)

    if role_tasks is not None:
        role_tasks.pause()
    if services is not None:
        await services.drain(timeout=left(0.4))
    for platform in reversed(started):
        try:
            await asyncio.wait_for(platform.stop(), timeout=left(0.8))
        except TimeoutError:
            log.warning("%s did not stop in time; closing anyway", platform.name)
        except Exception:
            log.exception("stopping %s failed", platform.name)
    if services is not None:
        # A round waiting on a send has it fail now the platforms are closed.
        await services.drain(timeout=left(0.5))
    if role_tasks is not None:
        await role_tasks.stop(timeout=left(0.5))
    if services is not None:
        await services.close()
