"""Build the python-telegram-bot Application: handlers, lifecycle, Bot API location."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from telegram import BotCommand
from telegram.ext import (
    AIORateLimiter,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)
from telegram.request import HTTPXRequest

from bot.http_server import HttpServer
from bot.settings import Settings
from bot.telegram_adapter import admin, buttons, commands, images
from bot.telegram_adapter.callback_data import FORGET_PATTERN, MY_SCORE_PATTERN, SIMILAR_PATTERN
from bot.telegram_adapter.context import PLATFORM, BotState, TasteApplication, TasteContext
from bot.telegram_adapter.inbox import Inbox
from bot.telegram_adapter.polling import Poller
from bot.telegram_adapter.webhook import webhook_handler
from domain import User

if TYPE_CHECKING:  # the services load torch, FAISS and SQLite; the adapter only calls them
    from bot.services import Services

log = logging.getLogger(__name__)

COMMANDS = [
    BotCommand("help", "what this bot does"),
    BotCommand("stats", "your votes, your model and its learning curve"),
    BotCommand("undo", "take back your last vote"),
    BotCommand("export", "your data as a file"),
    BotCommand("forget", "delete everything the bot knows about you"),
]
UPDATES = ["message", "callback_query"]


def build_application(
    settings: Settings, *, httpx_kwargs: dict[str, Any] | None = None
) -> TasteApplication:
    """The Application with every handler. The services are attached by `TelegramPlatform.start`."""

    def request(read_timeout: float) -> HTTPXRequest:
        return HTTPXRequest(
            connection_pool_size=64, read_timeout=read_timeout, httpx_kwargs=httpx_kwargs
        )

    assert settings.telegram_bot_token is not None, "Telegram needs TELEGRAM_BOT_TOKEN"
    token = settings.telegram_bot_token.get_secret_value()
    app: TasteApplication = (
        ApplicationBuilder()
        .token(token)
        # PTB appends the token: requests go to {url}/bot<token>/<method>,
        # files come from {url}/file/bot<token>/<path> — as with a self-hosted server.
        .base_url(f"{settings.telegram_api_url}/bot")
        .base_file_url(f"{settings.telegram_api_url}/file/bot")
        .request(request(read_timeout=30))
        .get_updates_request(request(read_timeout=60))
        .context_types(ContextTypes(context=TasteContext, bot_data=BotState))
        # Photos take ~100 ms of CLIP each; without this every button tap would wait behind them.
        .concurrent_updates(True)
        .job_queue(None)  # scheduling is APScheduler's, in bot/scheduler.py
        # Updates come through the durable inbox (inbox.py), fetched by polling.py or
        # posted to webhook.py, not through PTB's Updater, which confirms before handling.
        .updater(None)
        # Queues outgoing calls within Telegram's flood limits and retries on RetryAfter,
        # so a burst of replies is delayed rather than dropped.
        .rate_limiter(
            AIORateLimiter(overall_max_rate=settings.telegram_messages_per_second, max_retries=3)
        )
        .build()
    )
    app.bot_data.settings = settings
    add_handlers(app)
    return app


def add_handlers(app: TasteApplication) -> None:
    app.add_handler(CommandHandler("start", commands.on_start))
    app.add_handler(CommandHandler("help", commands.on_help))
    app.add_handler(CommandHandler("stats", commands.cmd_stats))
    app.add_handler(CommandHandler("undo", commands.cmd_undo))
    app.add_handler(CommandHandler("forget", commands.cmd_forget))
    app.add_handler(CommandHandler("export", commands.cmd_export))
    app.add_handler(CommandHandler("retrain", admin.cmd_retrain))
    app.add_handler(CommandHandler("models", admin.cmd_models))
    app.add_handler(CommandHandler("rollback", admin.cmd_rollback))
    pictures = (
        filters.PHOTO
        | filters.Document.ALL
        | filters.ANIMATION
        | filters.VIDEO
        | filters.VIDEO_NOTE
    )
    app.add_handler(MessageHandler(pictures, images.on_image))
    # In private chats every message gets an answer; in groups the bot speaks only when
    # addressed (other members' stickers and other bots' commands are not for it).
    private = filters.ChatType.PRIVATE
    app.add_handler(MessageHandler(private & filters.COMMAND, commands.on_unknown_command))
    app.add_handler(MessageHandler(private & filters.Sticker.ALL, commands.on_sticker))
    app.add_handler(MessageHandler(private, commands.on_other_message))
    app.add_handler(CallbackQueryHandler(buttons.on_similar, pattern=SIMILAR_PATTERN))
    app.add_handler(CallbackQueryHandler(buttons.on_my_score, pattern=MY_SCORE_PATTERN))
    app.add_handler(CallbackQueryHandler(buttons.on_forget_confirm, pattern=FORGET_PATTERN))
    # Last: votes, and anything else gets "this button is not mine".
    app.add_handler(CallbackQueryHandler(buttons.on_vote))
    app.add_error_handler(commands.on_error)


async def attach_services(app: TasteApplication, services: Services) -> None:
    """Give the handlers the services, and the services a way to message Telegram users."""
    app.bot_data.services = services

    async def notify(user: User, text: str) -> None:
        await app.bot.send_message(chat_id=int(user.platform_user_id), text=text)

    services.notifications.register(PLATFORM, notify)
    await app.bot.set_my_commands(COMMANDS)


class TelegramPlatform:
    """Telegram as the runner drives it: long polling, or a webhook when WEBHOOK_URL is set;
    either way through the durable inbox. ``http``: the process's HTTP server, driven by the
    runner, which serves the webhook; without one, webhook mode runs its own."""

    name = PLATFORM

    def __init__(
        self, settings: Settings, *, http: HttpServer | None = None, **kwargs: Any
    ) -> None:
        self.settings = settings
        self.app = build_application(settings, **kwargs)
        self.inbox = Inbox(
            self.app,
            lease_seconds=settings.inbox_lease_seconds,
            retention_seconds=settings.inbox_retention_hours * 3600,
        )
        self.poller: Poller | None = None
        # Telegram sends this secret with every webhook request; requests without it are
        # refused (403). A fresh one per start is fine: setWebhook runs at every start.
        self.webhook_secret = settings.webhook_secret or secrets.token_urlsafe(32)
        self.own_http: HttpServer | None = None
        if settings.webhook_url is not None:
            if http is None:
                http = self.own_http = HttpServer(settings.webhook_listen, settings.webhook_port)
            path = urlsplit(settings.webhook_url).path or "/"
            http.add_webhook(path, webhook_handler(self.webhook_secret, self.inbox))

    async def connect(self) -> None:
        await self.app.initialize()  # getMe: checks the token before CLIP loads
        if self.own_http is not None:
            await self.own_http.connect()

    async def start(self, services: Services) -> Awaitable[None] | None:
        await attach_services(self.app, services)
        await self.app.start()
        if self.own_http is not None:
            await self.own_http.start(services)
        url = self.settings.webhook_url
        # Long polling: Telegram lets one process poll, so what is undone in the inbox was
        # left by a process that is gone. Webhook workers share the inbox: leases decide.
        await self.inbox.start(services.store.inbox, takeover=url is None)
        if url is None:
            await self.app.bot.delete_webhook()  # getUpdates is refused while one is set
            self.poller = Poller(self.app.bot, self.inbox, UPDATES)
            return self.poller.start()
        await self.app.bot.set_webhook(
            url=url, secret_token=self.webhook_secret, allowed_updates=UPDATES
        )
        return None

    async def stop(self) -> None:
        # No try/finally: when the runner's budget cuts this short, the process is exiting,
        # and closing PTB's connections to a Bot API that stopped answering would stall too.
        if self.poller is not None:
            await self.poller.stop()
        await self.inbox.stop()  # handlers in flight finish; the runner bounds the wait
        if self.app.running:
            await self.app.stop()
        await self.app.shutdown()
        if self.own_http is not None:
            await self.own_http.stop()
