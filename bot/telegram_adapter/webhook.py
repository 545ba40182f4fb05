"""Telegram's webhook: a POST per update, answered 200 only once the update is stored.

Telegram resends an update until it gets a 2xx, so a failed database write answers 500
(Telegram tries again later) and a process that is starting or stopping answers 503.
"""

from __future__ import annotations

import hmac
import logging

from aiohttp import web

from bot.http_server import Handler
from bot.telegram_adapter.inbox import Inbox

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


def webhook_handler(secret: str, inbox: Inbox) -> Handler:
    """The POST handler for the webhook path; ``secret`` is the one given to setWebhook."""

    async def on_post(request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), secret.encode()):
            return web.Response(status=403, text="wrong secret token\n")
        if not inbox.accepting:
            return web.Response(status=503, text="not accepting updates now\n")
        try:
            payload = await request.json()
            int(payload["update_id"])
        except (ValueError, KeyError, TypeError):
            return web.Response(status=400, text="not an update\n")
        try:
            await inbox.receive([payload])
        except Exception:
            log.exception(
                "could not store update %s; Telegram sends it again", payload["update_id"]
            )
            return web.Response(status=500, text="not stored\n")
        return web.Response(text="ok\n")

    return on_post
