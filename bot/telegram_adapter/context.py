"""What every Telegram handler shares: the typed context (services, settings), who sent an
update, and the checks that guard commands."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from telegram import Message, Update
from telegram.constants import ChatType
from telegram.ext import Application, CallbackContext, ExtBot

from bot import render
from bot.settings import Settings
from domain import Person

if TYPE_CHECKING:  # the services load torch, FAISS and SQLite; the adapter only calls them
    from bot.services import Services

PLATFORM = "telegram"


@dataclass
class Album:
    """Images of one album (one media_group_id) that have arrived so far."""

    messages: list[Message] = field(default_factory=list)
    last_arrival: float = 0.0
    # Set once the first image's handler has answered the album: the other images' handlers
    # wait for it, so none of their updates is marked done in the inbox before the reply.
    answered: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class BotState:
    """Application.bot_data: what handlers use, set before the application starts."""

    settings: Settings | None = None
    services: Services | None = None
    albums: dict[tuple[int, str], Album] = field(default_factory=dict)


# ExtBot[int]: the rate limiter's per-call argument type (AIORateLimiter: max_retries).
class TasteContext(CallbackContext[ExtBot[int], dict, dict, BotState]):  # type: ignore[type-arg]
    @property
    def services(self) -> Services:
        assert self.bot_data.services is not None, "services are attached at start"
        return self.bot_data.services

    @property
    def settings(self) -> Settings:
        assert self.bot_data.settings is not None, "settings are set before the app starts"
        return self.bot_data.settings


TasteApplication = Application[ExtBot[int], TasteContext, dict, dict, BotState, None]  # type: ignore[type-arg]


def person_of(update: Update) -> Person:
    user = update.effective_user
    assert user is not None
    return Person(PLATFORM, str(user.id), user.full_name, user.username)


def in_group(update: Update) -> bool:
    return update.effective_chat is not None and update.effective_chat.type != ChatType.PRIVATE


def is_admin(update: Update, context: TasteContext) -> bool:
    return (
        update.effective_user is not None and update.effective_user.id in context.settings.admin_ids
    )


async def require_admin(update: Update, context: TasteContext, command: str) -> bool:
    """True for an admin; anyone else is told the command is not theirs."""
    if is_admin(update, context):
        return True
    assert update.effective_message is not None
    await update.effective_message.reply_text(render.admins_only(command))
    return False


async def private_only(update: Update, command: str) -> bool:
    """Commands about a person's own data are answered in private chats only, so a group
    never sees one member's votes, scores or files. True when the update was refused."""
    if not in_group(update):
        return False
    assert update.effective_message is not None
    await update.effective_message.reply_text(render.private_only(command))
    return True
