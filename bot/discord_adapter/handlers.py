"""Discord handlers: parse the event, make one service call, render the answer (bot/render.py)."""

from __future__ import annotations

import asyncio
import io
import logging
import re
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import discord
from discord import app_commands

from bot import admin_text, metrics, render
from bot.charts import learning_curve_png
from bot.discord_adapter.views import vote_view
from domain import AlreadyAnswered, IncomingImage, Person, Refused, Vote

if TYPE_CHECKING:
    from bot.discord_adapter.app import TasteClient

log = logging.getLogger(__name__)

PLATFORM = "discord"
MAX_MESSAGE = 2000  # Discord's limit on a message's characters
# Discord drops an interaction that is not acknowledged within 3 s; leave room for the round trip.
ACK_WITHIN_S = 2.0
VIDEO_SUFFIXES = {".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v"}
# Only images uploaded to Discord are fetched from embeds: never an arbitrary URL.
DISCORD_CDN_HOSTS = {"cdn.discordapp.com", "media.discordapp.net"}

USER_USAGE = "Give a Discord user: a mention, their user id, or @their-username."


# A user option typed as text: a mention (<@123>, <@!123>) or a bare id; ASCII digits only.
USER_REFERENCE = re.compile(r"<@!?([0-9]+)>|([0-9]+)")


def person(user: discord.User | discord.Member) -> Person:
    return Person(PLATFORM, str(user.id), user.display_name, user.name)


def is_video_attachment(attachment: discord.Attachment) -> bool:
    """Videos are refused without downloading them; every other file is fetched and its
    bytes decide (clients send JPEGs as application/octet-stream, or with no type at all)."""
    if attachment.content_type:
        return attachment.content_type.split(";")[0].strip().startswith("video/")
    return PurePosixPath(attachment.filename).suffix.lower() in VIDEO_SUFFIXES


def uploaded_image_urls(message: discord.Message) -> list[str]:
    """Image embeds whose picture is a file uploaded to Discord (a pasted CDN link)."""
    urls = []
    for embed in message.embeds:
        url = embed.url if embed.type == "image" else embed.image.url
        if url and urlsplit(url).scheme == "https" and urlsplit(url).hostname in DISCORD_CDN_HOSTS:
            urls.append(url)
    return urls


def addressed_to_bot(client: TasteClient, message: discord.Message) -> bool:
    """DMs, messages that mention the bot, and the configured channels (or threads in them)."""
    if isinstance(message.channel, discord.DMChannel):
        return True
    if client.user is not None and client.user in message.mentions:
        return True
    channels = client.settings.discord_channel_ids
    parent_id = getattr(message.channel, "parent_id", None)
    return message.channel.id in channels or parent_id in channels


async def on_message(client: TasteClient, message: discord.Message) -> None:
    """Attachments and uploaded-image embeds → a score and vote buttons, one reply each."""
    if message.author.bot or not addressed_to_bot(client, message):
        return
    images = [a for a in message.attachments if not is_video_attachment(a)]
    videos = [a for a in message.attachments if is_video_attachment(a)]
    embeds = uploaded_image_urls(message)
    if videos:
        await message.reply(render.refusal_text(Refused("video")), mention_author=False)
    for attachment in images:
        await score_and_reply(
            client, message, f"{message.id}:{attachment.id}", attachment.url, attachment.size
        )
    for n, url in enumerate(embeds):
        await score_and_reply(client, message, f"{message.id}:embed{n}", url, None)
    if not (images or videos or embeds) and (
        isinstance(message.channel, discord.DMChannel)
        or (client.user is not None and client.user in message.mentions)
    ):
        await message.reply(render.SEND_AN_IMAGE, mention_author=False)


async def score_and_reply(
    client: TasteClient, message: discord.Message, key: str, url: str, size: int | None
) -> None:
    """One image → one core call → one reply (score + persistent buttons, or one sentence)."""
    incoming = IncomingImage(
        person=person(message.author),
        chat_id=str(message.channel.id),
        message_id=key,  # one submission per image, several images per message
        caption=message.content or None,
        claimed_bytes=size,
    )

    async def download() -> bytes:
        return await client.download(url, limit=client.settings.max_image_bytes)

    outcome = await client.services.scoring.score_image(incoming, download)
    metrics.count_photo(PLATFORM, outcome)
    if isinstance(outcome, AlreadyAnswered):
        return  # a message event seen twice (gateway resume)
    if isinstance(outcome, Refused):
        await message.reply(render.refusal_text(outcome), mention_author=False)
        return
    # The buttons act on the person's earlier vote on this image, if any, so that one image
    # never gets two votes (as on Telegram). In a server channel everyone sees the reply:
    # the score stays private, behind 🔒 My score.
    shared = not isinstance(message.channel, discord.DMChannel)
    view = vote_view(outcome.vote_target, chosen=outcome.rated_before, shared=shared)
    text = render.GROUP_PROMPT if shared else render.score_text(outcome)
    files = []
    if outcome.matched_file is not None and not shared:
        # Rated before: show the picture it matched, whose vote the buttons change.
        picture = await asyncio.to_thread(outcome.matched_file.read_bytes)
        files.append(discord.File(io.BytesIO(picture), filename=outcome.matched_file.name))
    reply = await message.reply(text, view=view, files=files, mention_author=False)
    await client.services.scoring.reply_sent(outcome.submission_id, str(reply.id))


async def on_vote(
    interaction: discord.Interaction[TasteClient], submission_id: int, vote: Vote
) -> None:
    """A vote button: commit the presser's vote, acknowledge within 3 s, show the choice."""
    try:
        commit = asyncio.ensure_future(
            interaction.client.services.votes.record_vote(
                person(interaction.user), submission_id, vote
            )
        )
        try:
            outcome = await asyncio.wait_for(asyncio.shield(commit), ACK_WITHIN_S)
        except TimeoutError:
            # The database is slow (a long write holds it): acknowledge now, answer once committed.
            await interaction.response.defer()
            outcome = await commit
        metrics.count_vote(PLATFORM, outcome)
        if outcome is None:
            await _answer(interaction, text=render.UNKNOWN_IMAGE)
        elif isinstance(interaction.channel, discord.DMChannel):
            # A DM is the presser's own: the buttons show the choice.
            await _answer(interaction, view=vote_view(submission_id, chosen=vote))
        else:
            # In a server channel everyone sees the message: confirm to the presser alone.
            await _answer(interaction, text=render.vote_ack(vote, outcome.changed))
    except Exception:
        log.exception("error while handling a vote")
        if not interaction.response.is_done():
            await interaction.response.send_message(render.TAP_AGAIN, ephemeral=True)


async def on_my_score(interaction: discord.Interaction[TasteClient], submission_id: int) -> None:
    """🔒 My score: the presser's own score for this image, shown only to them."""
    scored = await interaction.client.services.scoring.score_for(
        person(interaction.user), submission_id
    )
    text = render.UNKNOWN_IMAGE if scored is None else render.score_text(scored)
    await interaction.response.send_message(text, ephemeral=True)


async def _answer(
    interaction: discord.Interaction[Any],
    *,
    text: str | None = None,
    view: discord.ui.View | None = None,
) -> None:
    """Edit the buttons (view) or confirm privately (text), as a response or after a defer."""
    if view is not None:
        if interaction.response.is_done():
            await interaction.edit_original_response(view=view)
        else:
            await interaction.response.edit_message(view=view)
    elif text is not None:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)


def is_admin(interaction: discord.Interaction[TasteClient]) -> bool:
    return interaction.user.id in interaction.client.settings.discord_admin_ids


async def require_admin(interaction: discord.Interaction[TasteClient], command: str) -> bool:
    """True for an admin; anyone else is told, privately, the command is not theirs."""
    if is_admin(interaction):
        return True
    await interaction.response.send_message(render.admins_only(command), ephemeral=True)
    return False


async def cmd_help(interaction: discord.Interaction[TasteClient]) -> None:
    """/help: what to do."""
    admin_help = render.DISCORD_ADMIN_HELP if is_admin(interaction) else ""
    text = render.help_text(interaction.client.settings.head_min_votes, admin_help)
    await interaction.response.send_message(text, ephemeral=True)


async def cmd_stats(interaction: discord.Interaction[TasteClient]) -> None:
    """/stats: the person's counts and model, with the learning-curve chart; totals for admins."""
    client = interaction.client
    who = person(interaction.user)
    stats = await client.services.people.stats(who, include_totals=is_admin(interaction))
    curve = await client.services.people.learning_curve(who)
    caption = render.curve_caption(stats, curve, client.settings.head_min_votes, limit=MAX_MESSAGE)
    if not curve.versions and not curve.votes:
        await interaction.response.send_message(caption, ephemeral=True)
        return
    await interaction.response.defer(ephemeral=True, thinking=True)  # the chart takes a moment
    png = await asyncio.to_thread(learning_curve_png, curve)
    chart = discord.File(io.BytesIO(png), filename="learning-curve.png")
    await interaction.followup.send(caption, file=chart, ephemeral=True)


async def cmd_export(interaction: discord.Interaction[TasteClient]) -> None:
    """/export: the person's own data as a JSON file, shown only to them."""
    export = await interaction.client.services.people.export(person(interaction.user))
    await interaction.response.send_message(
        render.export_caption(export),
        file=discord.File(io.BytesIO(export.data), filename=export.filename),
        ephemeral=True,
    )


class ForgetConfirm(discord.ui.View):
    """The /forget confirmation: ephemeral and short-lived, so not persistent."""

    def __init__(self) -> None:
        super().__init__(timeout=300)

    @discord.ui.button(label="Delete everything", style=discord.ButtonStyle.danger)
    async def yes(self, interaction: discord.Interaction[TasteClient], _: Any) -> None:
        report = await interaction.client.services.people.forget(person(interaction.user))
        await interaction.response.edit_message(content=render.forget_report(report), view=None)

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary)
    async def no(self, interaction: discord.Interaction[TasteClient], _: Any) -> None:
        await interaction.response.edit_message(content=render.NOTHING_DELETED, view=None)


async def cmd_forget(interaction: discord.Interaction[TasteClient]) -> None:
    """/forget: ask for confirmation, then delete everything of the person."""
    await interaction.response.send_message(
        render.forget_prompt(), view=ForgetConfirm(), ephemeral=True
    )


async def cmd_retrain(interaction: discord.Interaction[TasteClient]) -> None:
    """/retrain (admins): retrain everyone with new votes now."""
    if not await require_admin(interaction, "/retrain"):
        return
    services = interaction.client.services
    if services.settings.role == "worker":  # a trainer trains
        queued = await services.queue.enqueue_on_request(PLATFORM, "all")
        await interaction.response.send_message(
            admin_text.queued_text(queued, "all"), ephemeral=True
        )
        return
    # Training takes longer than Discord's 3 s: acknowledge first ("thinking…"), answer after.
    await interaction.response.defer(ephemeral=True, thinking=True)
    outcomes = await services.retraining.retrain_due_heads(min_new_votes=1, trigger="admin")
    await interaction.followup.send(
        admin_text.retrain_text(outcomes, limit=MAX_MESSAGE), ephemeral=True
    )


def user_id_of(text: str) -> str | None:
    """The Discord user id in a mention or a bare id, "@name" as it is (a username the bot
    has seen), else None."""
    text = text.strip()
    if text.startswith("@") and len(text) > 1 and " " not in text:
        return text
    match = USER_REFERENCE.fullmatch(text)
    return None if match is None else match.group(1) or match.group(2)


async def _admin_target(
    interaction: discord.Interaction[TasteClient], command: str, user: str
) -> str | None:
    """The Discord user id an admin command names, or None once the refusal (not an admin)
    or the usage line (not a user) has been sent."""
    if not await require_admin(interaction, command):
        return None
    target = user_id_of(user)
    if target is None:
        await interaction.response.send_message(USER_USAGE, ephemeral=True)
    return target


@app_commands.describe(user="A Discord user: a mention or their user id")
async def cmd_models(interaction: discord.Interaction[TasteClient], user: str) -> None:
    """/models user (admins): every model version of a Discord person, with metrics."""
    target = await _admin_target(interaction, "/models", user)
    if target is None:
        return
    listing = await interaction.client.services.admin.models_of(PLATFORM, target)
    await interaction.response.send_message(
        admin_text.models_text(target, listing, limit=MAX_MESSAGE), ephemeral=True
    )


@app_commands.describe(
    user="A Discord user: a mention or their user id",
    version="The model version, as /models lists it",
)
async def cmd_rollback(
    interaction: discord.Interaction[TasteClient], user: str, version: int
) -> None:
    """/rollback user version (admins): make an earlier model of a Discord person the active one."""
    target = await _admin_target(interaction, "/rollback", user)
    if target is None:
        return
    # A rollback waits for a running retrain (the training lock): acknowledge within 3 s first.
    await interaction.response.defer(ephemeral=True, thinking=True)
    client = interaction.client
    outcome = await client.services.admin.rollback(PLATFORM, target, version)
    await interaction.followup.send(
        admin_text.rollback_text(target, version, outcome, client.settings.head_files_kept),
        ephemeral=True,
    )
