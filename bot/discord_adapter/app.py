"""The discord.py client: intents, slash commands, persistent buttons, bounded downloads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import aiohttp
import discord
from discord import app_commands

from bot import render
from bot.discord_adapter import handlers
from bot.discord_adapter.handlers import PLATFORM
from bot.discord_adapter.views import MyScoreButton, VoteButton
from bot.settings import Settings
from domain import User, Vote

if TYPE_CHECKING:  # the services load torch, FAISS and SQLite; the adapter only calls them
    from bot.services import Services

log = logging.getLogger(__name__)


def intents() -> discord.Intents:
    """Default intents (servers, server and DM messages) plus message content.

    Message content is privileged: enable it for the bot in the Developer Portal, or
    connecting fails with PrivilegedIntentsRequired. Without it the bot could not see
    attachments in channels where it is not mentioned.
    """
    wanted = discord.Intents.default()
    wanted.message_content = True
    return wanted


class TasteClient(discord.Client):
    """A discord.Client with the services injected (`attach`) once they are open."""

    def __init__(self, settings: Settings, *, sync_commands: bool = True) -> None:
        super().__init__(
            intents=intents(),
            # Never ping @everyone or roles, whatever a caption says.
            allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, users=True),
        )
        self.settings = settings
        self.tree = app_commands.CommandTree(self)
        self.tree.on_error = on_command_error  # type: ignore[method-assign]
        self.sync_commands = sync_commands
        self._services: Services | None = None
        self._downloads: aiohttp.ClientSession | None = None
        add_commands(self.tree)

    @property
    def services(self) -> Services:
        assert self._services is not None, "the services are attached before connecting"
        return self._services

    def attach(self, services: Services) -> None:
        """Give the handlers the services, and the services a way to message a person here."""
        self._services = services

        async def notify(user: User, text: str) -> None:
            target = await self.fetch_user(int(user.platform_user_id))
            await target.send(text)

        services.notifications.register(PLATFORM, notify)

    async def setup_hook(self) -> None:
        # Buttons of any earlier run keep working: their custom_ids match VoteButton's template.
        self.add_dynamic_items(VoteButton, MyScoreButton)
        if self.sync_commands:
            await self.tree.sync()

    async def on_message(self, message: discord.Message) -> None:
        await handlers.on_message(self, message)

    async def on_vote_button(
        self, interaction: discord.Interaction[Any], submission_id: int, vote: Vote
    ) -> None:
        """VoteButton's callback lands here, so views.py needs no handler import."""
        await handlers.on_vote(interaction, submission_id, vote)

    async def on_my_score_button(
        self, interaction: discord.Interaction[Any], submission_id: int
    ) -> None:
        await handlers.on_my_score(interaction, submission_id)

    async def download(self, url: str, *, limit: int) -> bytes:
        """At most limit + 1 bytes of `url`, never more in memory; the core refuses the +1."""
        if self._downloads is None:
            self._downloads = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        async with self._downloads.get(url) as response:
            response.raise_for_status()
            data = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                data += chunk
                if len(data) > limit:
                    break
            return bytes(data[: limit + 1])

    async def close(self) -> None:
        await super().close()
        if self._downloads is not None:
            await self._downloads.close()


def add_commands(tree: app_commands.CommandTree[Any]) -> None:
    """Slash commands: each is one handler in handlers.py."""
    # Handlers take the interaction and then their options (none, or /models' and /rollback's).
    commands: list[tuple[str, str, Callable[..., Coroutine[Any, Any, None]]]] = [
        ("help", "What this bot does", handlers.cmd_help),
        ("stats", "Your votes, your model and its learning curve", handlers.cmd_stats),
        ("export", "Your own data, as a JSON file", handlers.cmd_export),
        ("forget", "Delete everything the bot knows about you", handlers.cmd_forget),
        ("retrain", "Admins: retrain models now", handlers.cmd_retrain),
        ("models", "Admins: a person's model versions", handlers.cmd_models),
        ("rollback", "Admins: make an earlier model version the active one", handlers.cmd_rollback),
    ]
    for name, description, callback in commands:
        tree.add_command(
            app_commands.Command(name=name, description=description, callback=callback)
        )


async def on_command_error(
    interaction: discord.Interaction[Any], error: app_commands.AppCommandError
) -> None:
    """Log the details; tell the person one sentence."""
    log.error("error in /%s", interaction.command and interaction.command.name, exc_info=error)
    if interaction.response.is_done():
        await interaction.followup.send(render.SOMETHING_WRONG, ephemeral=True)
    else:
        await interaction.response.send_message(render.SOMETHING_WRONG, ephemeral=True)


def build_client(settings: Settings, **kwargs: Any) -> TasteClient:
    return TasteClient(settings, **kwargs)


class DiscordPlatform:
    name = "discord"

    def __init__(self, settings: Settings, **kwargs: object) -> None:
        assert settings.discord_bot_token is not None
        self.token = settings.discord_bot_token.get_secret_value()
        self.client = build_client(settings, **kwargs)
        self.task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        await self.client.login(self.token)  # checks the token, registers buttons and commands

    async def start(self, services: Services) -> asyncio.Task[None]:
        self.client.attach(services)
        self.task = asyncio.create_task(self.client.connect(reconnect=True), name="discord")
        return self.task

    async def stop(self) -> None:
        await self.client.close()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
