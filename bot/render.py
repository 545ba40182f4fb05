"""Texts the bot sends, the same on every platform. Pure functions of core records."""

from __future__ import annotations

from collections.abc import Sequence

from bot.core import RetrainOutcome, Scored, Stats
from storage.records import Vote

VOTE_LABELS = {Vote.DISLIKE: "👎 Dislike", Vote.LIKE: "👍 Like", Vote.SUPER_LIKE: "⭐ Super like"}
VOTE_ORDER = (Vote.DISLIKE, Vote.LIKE, Vote.SUPER_LIKE)

HELP = (
    "Send me an image — a photo, a screenshot, a meme — and I'll guess how much *you* "
    "will like it. Then tell me with the buttons: 👎 dislike, 👍 like, ⭐ super like.\n\n"
    "Every vote trains your own model; after about {min_votes} votes (some likes, some "
    "dislikes) you get a first model, and it is retrained as you vote more.\n\n"
    "/stats — your votes and your model\n/help — this message"
)


def help_text(min_votes: int) -> str:
    return HELP.format(min_votes=min_votes)


def score_text(scored: Scored) -> str:
    model = "cold start" if scored.model_version is None else f"model v{scored.model_version}"
    lines = [f"Your score: {scored.score:.0%} · {model}"]
    if scored.closest_liked is not None:
        if scored.close_liked:
            noun = "image" if scored.close_liked == 1 else "images"
            lines.append(
                f"Looks like {scored.close_liked} {noun} you liked · closest {scored.closest_liked:.2f}"
            )
        else:
            lines.append(
                f"Not close to anything you liked yet · closest {scored.closest_liked:.2f}"
            )
    return "\n".join(lines)


def vote_ack(vote: Vote, changed: bool) -> str:
    return f"Saved: {VOTE_LABELS[vote]}" if changed else f"Already saved: {VOTE_LABELS[vote]}"


def stats_text(stats: Stats, min_votes: int) -> str:
    c = stats.counts
    lines = [f"Images: {c.images} · 👍 {c.likes} · ⭐ {c.super_likes} · 👎 {c.dislikes}"]
    if stats.active is None:
        lines.append(
            f"Model: cold start. A first model needs {min_votes} votes with at least one like "
            f"and one dislike (you have {c.votes})."
        )
    else:
        m = stats.active
        auc = m.metrics.get("auc")
        auc_text = "n/a" if auc is None else f"{auc:.2f}"
        lines.append(
            f"Model v{m.version}: holdout AUC {auc_text} on {m.holdout_size} held-out votes, "
            f"trained on {m.train_size}"
        )
    if stats.totals is not None:
        t = stats.totals
        lines.append(
            f"All users: {t.users} people · {t.images} images · {t.submissions} submissions · "
            f"{t.votes} votes · {t.active_models} active models"
        )
    return "\n".join(lines)


def retrain_text(outcomes: Sequence[RetrainOutcome]) -> str:
    if not outcomes:
        return "Nobody has new votes since their last model; nothing to retrain."
    lines = []
    for o in outcomes:
        who = f"user {o.user.platform_user_id}"
        if o.version is None:
            lines.append(f"{who}: not trained — {o.reason}")
            continue
        auc = "n/a" if o.auc is None else f"{o.auc:.3f}"
        verdict = "promoted" if o.promoted else "not promoted"
        lines.append(f"{who}: v{o.version} {verdict}, AUC {auc} on held-out votes — {o.reason}")
    return "\n".join(lines)
