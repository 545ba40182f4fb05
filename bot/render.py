"""Every sentence the bot says to a person, the same on every platform: pure functions of
domain records. Adapters only add platform formatting (buttons, embeds, limits)."""

from __future__ import annotations

from collections.abc import Sequence

from domain import (
    Export,
    ForgetReport,
    LearningCurve,
    ModelVersion,
    Refused,
    RetrainOutcome,
    Scored,
    Stats,
    Totals,
    Vote,
)

VOTE_LABELS = {Vote.DISLIKE: "👎 Dislike", Vote.LIKE: "👍 Like", Vote.SUPER_LIKE: "⭐ Super like"}
VOTE_EMOJI = {Vote.DISLIKE: "👎", Vote.LIKE: "👍", Vote.SUPER_LIKE: "⭐"}
VOTE_ORDER = (Vote.DISLIKE, Vote.LIKE, Vote.SUPER_LIKE)
SEND_AN_IMAGE = "Send me an image and I'll score it for you. /help"
STICKER = "I don't score stickers; send me a photo, a screenshot or a meme instead."
SOMETHING_WRONG = "Something went wrong on my side; please try again."
TAP_AGAIN = "Something went wrong; please tap again."
UNKNOWN_IMAGE = "I no longer know this image."
NOTHING_DELETED = "Nothing was deleted."
TEXT_LIMIT = 4096  # Telegram's limit on a message (Discord's, 2000, is passed in)
CAPTION_LIMIT = 1024  # Telegram's limit on a photo caption

HELP = (
    "Send me an image — a photo, a screenshot, a meme, a GIF — and I'll guess how much you "
    "will like it. Then tell me with the buttons: 👎 dislike, 👍 like, ⭐ super like.\n\n"
    "Every vote teaches your own taste model. After {first} (some likes, some dislikes) "
    "your first model is trained straight away, and it keeps learning as you vote.\n\n"
    "/stats — your votes and how well your model knows you\n"
    "/undo — take back your last vote\n"
    "/export — your data as a file\n"
    "/forget — delete everything I know about you\n"
    "/help — this message"
)

# Telegram's admin commands; Discord's slash commands describe their own options.
TELEGRAM_ADMIN_HELP = (
    "\n\nAdmin commands (only you and the other admins see them work):\n"
    "/stats all — everyone's votes and models\n"
    "/retrain — retrain everyone with new votes now; /retrain <user> for one person, "
    "/retrain crowd for the crowd model, /retrain full to fine-tune CLIP, "
    "/retrain cancel to stop that\n"
    "/models <user> — a person's model versions\n"
    "/rollback <user> <version> — make an earlier version theirs again\n"
    "<user> is a user id or an @username I have seen."
)
DISCORD_ADMIN_HELP = (
    "\n\nAdmin commands: /retrain (everyone with new votes), /models user, "
    "/rollback user version; /stats also shows everyone's totals."
)


def plural(count: int, noun: str, many: str | None = None) -> str:
    """ "1 vote", "2 votes" ("1 person", "3 people" with ``many``)."""
    return f"{count} {noun if count == 1 else many or noun + 's'}"


def help_text(min_votes: int, admin_help: str = "") -> str:
    return HELP.format(first=plural(min_votes, "vote")) + admin_help


def onboarding_text(min_votes: int, votes: int, has_model: bool, admin_help: str = "") -> str:
    text = help_text(min_votes, admin_help)
    if has_model:
        return text + "\n\nYou already have a taste model; every vote keeps improving it."
    return text + "\n\n" + first_model_progress(min_votes, votes)


def first_model_progress(min_votes: int, votes: int) -> str:
    """How far a person without a model is from their first one."""
    if votes == 0:
        return (
            f"Your first model needs {plural(min_votes, 'vote')} (some likes, some dislikes): "
            "send me a few images to get started."
        )
    missing = min_votes - votes
    if missing > 0:
        return f"Your first model needs {plural(missing, 'more vote')} (some likes, some dislikes)."
    return (
        "You have voted enough: your first model is on its way (it needs at least one like "
        "and one dislike)."
    )


def forget_prompt() -> str:
    return (
        "This deletes everything I know about you: your images, votes, models and their "
        "files. It cannot be undone. Delete it all?"
    )


def forget_report(report: ForgetReport | None) -> str:
    if report is None:
        return "I had nothing stored about you."
    return (
        f"Deleted: {plural(report.submissions, 'image')} you sent, {plural(report.votes, 'vote')}, "
        f"{plural(report.models, 'model')}, {plural(len(report.files), 'file')}. "
        "I no longer know anything about you."
    )


def undo_text(vote: Vote | None) -> str:
    if vote is None:
        return "You have no vote to undo."
    return f"Removed your last vote ({VOTE_LABELS[vote]}). That image is unrated again."


def units(text: str) -> int:
    """Length as Telegram counts it (UTF-16 code units: an emoji is two)."""
    return len(text.encode("utf-16-le")) // 2


def that_fit(texts: Sequence[str], budget: int, separator: str) -> list[str]:
    """The longest prefix of ``texts`` that fits in ``budget`` units, each with a separator."""
    out: list[str] = []
    for text in texts:
        budget -= units(text) + units(separator)
        if budget < 0:
            break
        out.append(text)
    return out


def curve_caption(
    stats: Stats, curve: LearningCurve, min_votes: int, limit: int = CAPTION_LIMIT
) -> str:
    """The /stats text and how often each version got the person right (the chart's left
    panel, in numbers), the newest that fit in ``limit``."""
    text = stats_text(stats, min_votes)
    points = [
        f"v{m.version} {m.metrics['auc']:.0%}"
        for m in curve.versions
        if m.metrics.get("auc") is not None
    ]
    if not points:
        return text[:limit]
    prefix, arrow = "\nGot you right, by version: ", " → "
    budget = limit - units(text) - units(prefix) - units("… → ")
    shown = that_fit(points[::-1], budget, arrow)[::-1]
    if not shown:
        return text[:limit]
    older = "… → " if len(shown) < len(points) else ""
    return text + prefix + older + arrow.join(shown)


def model_label(scored: Scored) -> str:
    """Which model gave the score: the person's own, the crowd's, or none yet."""
    if scored.model_version is not None:
        return f"model v{scored.model_version}"
    return "crowd model" if scored.by_crowd else "cold start"


def score_text(scored: Scored) -> str:
    model = model_label(scored)
    lines = [f"Your score: {scored.score:.0%} · {model}"]
    if scored.rated_before is not None:
        shown = " (this picture)" if scored.matched_file is not None else ""
        lines.append(f"You rated this before: {VOTE_LABELS[scored.rated_before]}{shown}")
    if scored.closest_liked is not None:
        if scored.close_liked:
            noun = "image" if scored.close_liked == 1 else "images"
            lines.append(
                f"Looks like {scored.close_liked} {noun} you liked · "
                f"closest {scored.closest_liked:.2f}"
            )
        else:
            lines.append(
                f"Not close to anything you liked yet · closest {scored.closest_liked:.2f}"
            )
    if scored.closest_disliked is not None:
        lines.append(f"Closest image you disliked: {scored.closest_disliked:.2f}")
    return "\n".join(lines)


def album_text(ranked: Sequence[tuple[int, Scored]]) -> str:
    """`ranked`: (position in the album, 1-based; score), best first."""
    lines = [f"Your album, best first ({len(ranked)} images):"]
    for rank, (position, scored) in enumerate(ranked, start=1):
        model = model_label(scored)
        before = (
            f" · rated before: {VOTE_LABELS[scored.rated_before]}" if scored.rated_before else ""
        )
        lines.append(f"{rank}. image {position}: {scored.score:.0%} · {model}{before}")
    lines.append("Vote on each with its row of buttons.")
    return "\n".join(lines)


MY_SCORE_LABEL = "🔒 My score"
GROUP_PROMPT = (
    "Rate this image with the buttons. "
    "🔒 My score shows how much you would like it (only you see it)."
)


def vote_ack(vote: Vote, changed: bool) -> str:
    return f"Saved: {VOTE_LABELS[vote]}" if changed else f"Already saved: {VOTE_LABELS[vote]}"


def stats_text(stats: Stats, min_votes: int) -> str:
    c = stats.counts
    lines = [f"Images you sent: {c.images} · 👍 {c.likes} · ⭐ {c.super_likes} · 👎 {c.dislikes}"]
    if stats.active is None:
        lines.append("No taste model yet. " + first_model_progress(min_votes, c.votes))
    else:
        lines.append(model_summary(stats.active))
    if stats.totals is not None:
        lines.append(totals_line(stats.totals))
    return "\n".join(lines)


def model_summary(m: ModelVersion) -> str:
    """A person's model in their words: what it learned from and how it did on the votes
    kept aside to check it."""
    learned = f"Your taste model (version {m.version}) learned from {plural(m.train_size, 'vote')}"
    # None for heads trained before the crowd model (or its advice) existed
    if m.metrics.get("crowd_weight") or m.metrics.get("crowd_offset"):
        learned += ", starting from what everyone likes (the crowd model) as far as you agree"
    elif m.metrics.get("crowd_advice"):
        learned += ", fitted the way that worked best for other people (the crowd model)"
    agreed = m.metrics.get("agreed")
    if m.holdout_size == 0 or agreed is None:
        return learned + "; I'll tell you how well it knows you once I can check it."
    return learned + f"; {_agreement(int(agreed), m.holdout_size)}."


def _agreement(agreed: int, checked: int) -> str:
    if checked == 1:
        verdict = "agreed with" if agreed else "got wrong"
        return f"it {verdict} the one vote I kept aside to check it"
    return f"it agreed with {agreed} of the {checked} votes I kept aside to check it"


def totals_line(t: Totals) -> str:
    return (
        f"All users: {plural(t.users, 'person', 'people')} · {plural(t.submissions, 'image')} "
        f"sent ({t.images} different) · {plural(t.votes, 'vote')} · "
        f"{plural(t.active_models, 'active model')}"
    )


def promotion_text(outcome: RetrainOutcome) -> str:
    """The message a person gets when their model is new or better (never for a tie)."""
    opening = "Your taste model got better" if outcome.had_model else "Your taste model is ready"
    if outcome.checked == 0 or outcome.agreed is None:
        return opening + ". I'll tell you how well it knows you once I can check it."
    return opening + f": {_agreement(outcome.agreed, outcome.checked)}."


# The formats a person is told to use: the everyday ones the decoder accepts (it also takes
# BMP, TIFF and AVIF, which nobody needs to be told about). tests/test_images.py decodes each.
FORMATS_NAMED = ("JPEG", "PNG", "WebP", "HEIC", "GIF")
_FORMAT_LIST = ", ".join(FORMATS_NAMED[:-1]) + " or " + FORMATS_NAMED[-1]
# What a file the decoder recognises but never opens is called in a sentence.
_KIND_NAMES = {
    "avif": "AVIF",
    "jxl": "JPEG XL",
    "jp2": "JPEG 2000",
    "psd": "Photoshop",
    "ico": "icon",
    "svg": "SVG",
}


def refusal_text(refused: Refused) -> str:
    """One friendly sentence saying why the file was not scored and what to send instead."""
    limit = refused.limit
    match refused.reason:
        case "empty":
            return "That file is empty; please send the picture again."
        case "too_large_bytes":
            over = "" if limit is None else f" (over {_human_bytes(limit)})"
            return f"That file is too big for me{over}; please send a smaller copy."
        case "too_large_pixels":
            over = "" if limit is None else f" (over {limit / 1e6:g} million pixels)"
            return f"That picture is too big for me{over}; please send a smaller copy."
        case "not_image":
            return f"That file is not an image I can read; please send a photo or a {_FORMAT_LIST} file."
        case "unsupported_format":
            name = _KIND_NAMES.get(refused.kind or "", "that kind of")
            return f"I can't open {name} files; please save it as {_FORMAT_LIST} and send it again."
        case "video":
            return "That's a video, and I only score pictures; please send a photo or a screenshot of it."
        case "corrupt":
            return (
                "That picture seems damaged or cut off, so I can't read it; please send it again."
            )
        case "rate_limited":
            return (
                "You're sending images faster than I can learn from them; "
                "please wait a minute and send that one again."
            )
    return "I couldn't read that file; please send a photo instead."


def _human_bytes(n: int) -> str:
    """Bytes as people count them on a phone: MB, or whole KB below one MB."""
    mb = n / (1024 * 1024)
    if mb >= 1:
        return f"{mb:.3g} MB"
    return f"{max(1, round(n / 1024))} KB"


def export_caption(export: Export) -> str:
    return f"Your data: {plural(export.images, 'image')} you sent, with your votes."


def admins_only(command: str) -> str:
    return f"Only the bot's admins can use {command}."


def private_only(command: str) -> str:
    return f"{command} is about your own data; send it to me in a private chat."


def unknown_command(command: str) -> str:
    return f"I don't know {command}. /help lists what I can do."


def sending_similar(count: int) -> str:
    if count == 1:
        return "Sending the image you liked that is closest to this one."
    return f"Sending the {count} images you liked that are closest to this one."
