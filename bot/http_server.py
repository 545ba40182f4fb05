"""The bot's HTTP server (aiohttp): /healthz, /metrics, and Telegram's webhook when set.

It is driven by the runner like a chat platform: `connect` starts listening (so /healthz
answers "loading" while CLIP loads), `start` hands it the services, `stop` closes it after
the platforms stopped. A webhook registers its path with `add_webhook` before `connect`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from bot import metrics

if TYPE_CHECKING:  # the services load torch, FAISS and the database
    from bot.services import Services

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# A database that does not answer SELECT 1 in this long is not healthy (SQLite waits up to
# busy_timeout, 5 s, for a writer; a health probe should not wait that long).
PING_SECONDS = 2.0


class HttpServer:
    name = "http"

    def __init__(self, listen: str, port: int) -> None:
        self.listen = listen
        self.port = port
        self.services: Services | None = None
        self.stopping = False
        self._webhooks: dict[str, Handler] = {}
        self._runner: web.AppRunner | None = None

    def add_webhook(self, path: str, handler: Handler) -> None:
        """Serve POST ``path`` (e.g. "/telegram") with ``handler``."""
        self._webhooks["/" + path.lstrip("/")] = handler

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        for path, handler in self._webhooks.items():
            app.router.add_post(path, handler)
        return app

    async def connect(self) -> None:
        # Access logs off: Telegram posts every update, and the bot logs what matters itself.
        self._runner = web.AppRunner(self.application(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.listen, self.port).start()
        log.info("HTTP on %s:%d (/healthz, /metrics)", self.listen, self.port)

    async def start(self, services: Services) -> None:
        self.services = services

    async def stop(self) -> None:
        self.stopping = True
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def health(self) -> str | None:
        """None when healthy, else the reason."""
        if self.stopping:
            return "stopping"
        if self.services is None:
            return "starting: the model is not loaded yet"
        try:
            await asyncio.wait_for(self.services.store.telemetry.ping(), PING_SECONDS)
        except Exception as error:  # any failure of the database is the answer here
            return f"database: {type(error).__name__}: {error}"
        return None

    async def _healthz(self, request: web.Request) -> web.Response:
        problem = await self.health()
        if problem is None:
            return web.Response(text="ok\n")
        return web.Response(status=503, text=problem + "\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        services = None if self.stopping else self.services
        body = await metrics.render(services)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
