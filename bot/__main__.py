"""`python -m bot`: read settings, load CLIP once, run Telegram and/or Discord on one event
loop until SIGINT/SIGTERM.

The runner owns what the platforms share — the core service (database, FAISS, CLIP) and
the retrain scheduler — and each platform only connects, receives and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from pydantic import ValidationError

from bot.core import TasteService
from bot.scheduler import start_scheduler
from bot.settings import Settings

log = logging.getLogger("bot")

OpenService = Callable[[], Awaitable[TasteService]]


def load_settings() -> Settings:
    """Settings, or one clear line on stderr and exit code 2."""
    try:
        return Settings()
    except ValidationError as error:
        problems = []
        for e in error.errors():
            if not e["loc"]:  # a whole-settings check, e.g. no platform token at all
                problems.append(str(e.get("ctx", {}).get("error", e["msg"])))
                continue
            name = str(e["loc"][0]).upper()
            problems.append(
                f"{name} is not set" if e["type"] == "missing" else f"{name}: {e['msg']}"
            )
        print(f"tastebot: {'; '.join(problems)} (see .env.example)", file=sys.stderr)
        raise SystemExit(2) from None


class Platform(Protocol):
    """One chat platform's adapter, as the runner drives it."""

    name: str

    async def connect(self) -> None:
        """Check the token (before CLIP loads, so a wrong token fails fast)."""

    async def start(self, service: TasteService) -> Awaitable[None] | None:
        """Attach the core and start receiving; may return what finishes if the platform dies."""

    async def stop(self) -> None:
        """Stop receiving and let handlers in flight finish."""


class TelegramPlatform:
    name = "telegram"

    def __init__(self, settings: Settings, open_service: OpenService, **kwargs: object) -> None:
        from bot.telegram_adapter.app import build_application

        self.app = build_application(settings, open_service, **kwargs)  # type: ignore[arg-type]

    async def connect(self) -> None:
        await self.app.initialize()  # getMe: checks the token

    async def start(self, service: TasteService) -> None:
        assert self.app.post_init is not None and self.app.updater is not None
        await self.app.post_init(self.app)  # attaches the (already open) service, sets commands
        # post_init also starts a scheduler for a Telegram-only Application; the runner
        # owns the single one every platform shares, so this one is stopped unused.
        if self.app.bot_data.scheduler is not None:
            self.app.bot_data.scheduler.shutdown(wait=False)
            self.app.bot_data.scheduler = None
        await self.app.start()
        await self.app.updater.start_polling(allowed_updates=["message", "callback_query"])

    async def stop(self) -> None:
        if self.app.updater is not None and self.app.updater.running:
            await self.app.updater.stop()
        if self.app.running:
            await self.app.stop()
        await self.app.shutdown()
        # post_shutdown is not run: it would close the service, which the runner owns.


class DiscordPlatform:
    name = "discord"

    def __init__(self, settings: Settings, **kwargs: object) -> None:
        from bot.discord_adapter.app import build_client

        assert settings.discord_bot_token is not None
        self.token = settings.discord_bot_token.get_secret_value()
        self.client = build_client(settings, **kwargs)  # type: ignore[arg-type]
        self.task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        await self.client.login(self.token)  # checks the token, registers buttons and commands

    async def start(self, service: TasteService) -> asyncio.Task[None]:
        self.client.attach(service)
        self.task = asyncio.create_task(self.client.connect(reconnect=True), name="discord")
        return self.task

    async def stop(self) -> None:
        await self.client.close()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


def build_platforms(settings: Settings, open_service: OpenService) -> list[Platform]:
    platforms: list[Platform] = []
    if settings.telegram_bot_token is not None:
        platforms.append(TelegramPlatform(settings, open_service))
    if settings.discord_bot_token is not None:
        platforms.append(DiscordPlatform(settings))
    return platforms


class SharedService:
    """Opens the core once, however many platforms ask for it."""

    def __init__(self, open_service: OpenService) -> None:
        self._open = open_service
        self._lock = asyncio.Lock()
        self.service: TasteService | None = None

    async def get(self) -> TasteService:
        async with self._lock:
            if self.service is None:
                self.service = await self._open()
            return self.service


async def serve(
    settings: Settings,
    shared: SharedService,
    platforms: Sequence[Platform],
    stop: asyncio.Event,
) -> None:
    """Connect every platform, open the core, start the scheduler, run until `stop`, shut down.

    A platform whose connection dies for good (a revoked token, a missing privileged
    intent) stops everything, and its error is raised.
    """
    started: list[Platform] = []
    scheduler = None
    try:
        for platform in platforms:
            started.append(platform)
            await platform.connect()
        service = await shared.get()
        scheduler = start_scheduler(service, settings)
        watched: list[asyncio.Future[None]] = []
        for platform in platforms:
            done = await platform.start(service)
            if done is not None:
                watched.append(asyncio.ensure_future(done))
            log.info("%s: receiving", platform.name)
        stopping = asyncio.ensure_future(stop.wait())
        finished, _ = await asyncio.wait([stopping, *watched], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        for future in finished - {stopping}:
            future.result()  # raises the platform's error
            raise RuntimeError("a platform stopped on its own")
    finally:
        for platform in reversed(started):
            try:
                await platform.stop()
            except Exception:
                log.exception("stopping %s failed", platform.name)
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        if shared.service is not None:
            await shared.service.close()


def main() -> None:
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request URL at INFO, and Bot API URLs contain the token.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    async def open_service() -> TasteService:
        from learner.encoder import ClipImageEncoder  # torch import: slow, so only here

        log.info("loading CLIP %s", settings.clip_model)
        device = None if settings.device == "auto" else settings.device
        threads = settings.torch_threads or None
        encoder = await asyncio.to_thread(
            ClipImageEncoder, settings.clip_model, device=device, torch_threads=threads
        )
        service = await TasteService.open(settings, encoder)
        log.info("ready: encoder %s, data in %s", encoder.version, settings.data_dir)
        return service

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        shared = SharedService(open_service)
        await serve(settings, shared, build_platforms(settings, shared.get), stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
