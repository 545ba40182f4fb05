"""What admins read: model listings, rollbacks, retrain and fine-tune results, everyone's
totals. Operators' words (versions, AUC on held-out votes) are fine here; a person's own
texts are in bot/render.py."""

from __future__ import annotations

from collections.abc import Sequence

from bot.render import TEXT_LIMIT, plural, that_fit, totals_line, units
from domain import (
    BackboneOutcome,
    CrowdOutcome,
    ModelList,
    ModelVersion,
    RetrainOutcome,
    Rollback,
    Totals,
    UserSummary,
)


def models_text(platform_user_id: str, listing: ModelList | None, limit: int = TEXT_LIMIT) -> str:
    """Every version, oldest first, as far as ``limit`` allows: a person retrained every few
    votes has hundreds, so the oldest are left out (the active one never is)."""
    if listing is None:
        return f"I don't know user {platform_user_id}."
    versions = listing.versions
    if not versions:
        return f"User {platform_user_id} has no models yet."
    header = f"Models of user {platform_user_id}:"
    rows = [
        _model_line(m, m.version in listing.removed, m.version in listing.other_encoder)
        for m in versions
    ]
    active = {row for m, row in zip(versions, rows, strict=True) if m.status == "active"}
    budget = limit - units(header) - units(_older(len(rows))) - 1
    budget -= sum(units(row) + 1 for row in active)
    newest = set(that_fit([row for row in reversed(rows) if row not in active], budget, "\n"))
    # Oldest first; an active version older than those shown (a rollback) comes first.
    shown = [row for row in rows if row in active or row in newest]
    left_out = len(rows) - len(shown)
    return "\n".join([header] + ([_older(left_out)] if left_out else []) + shown)


def _model_line(m: ModelVersion, removed: bool, other_encoder: bool) -> str:
    auc, ece = m.metrics.get("auc"), m.metrics.get("ece")
    # Why /rollback can't restore it, if it can't.
    notes = [n for n, on in (("other CLIP", other_encoder), ("file removed", removed)) if on]
    status = f"{m.status} ({', '.join(notes)})" if notes else m.status
    return (
        f"v{m.version} {status}: AUC {'n/a' if auc is None else f'{auc:.3f}'}, "
        f"ECE {'n/a' if ece is None else f'{ece:.3f}'}, trained on {m.train_size}, "
        f"held out {m.holdout_size} · {m.created_at[:16].replace('T', ' ')}"
    )


def _older(count: int) -> str:
    return f"… {count} older versions not shown"


def rollback_text(platform_user_id: str, version: int, outcome: Rollback, kept: int) -> str:
    if outcome is Rollback.DONE:
        return f"User {platform_user_id} now uses model v{version}."
    if outcome is Rollback.UNKNOWN_USER:
        return f"I don't know user {platform_user_id}."
    if outcome is Rollback.FILE_REMOVED:
        return (
            f"Model v{version} of user {platform_user_id} can't be restored: only the files of "
            f"the active model and the {kept} newest others are kept (HEAD_FILES_KEPT)."
        )
    if outcome is Rollback.OTHER_ENCODER:
        return (
            f"Model v{version} of user {platform_user_id} can't be restored: it was trained on "
            "another CLIP encoder's embeddings (before a fine-tune) and can't score this one's."
        )
    if outcome is Rollback.UNREADABLE:
        return (
            f"Model v{version} of user {platform_user_id} can't be restored: its file can't be "
            "read (see the log)."
        )
    return f"User {platform_user_id} has no model v{version}."


def retrain_text(outcomes: Sequence[RetrainOutcome], limit: int = TEXT_LIMIT) -> str:
    """One line per person, as many as ``limit`` allows, after a count when there are several."""
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
    if len(lines) == 1:
        return lines[0][:limit]
    promoted = sum(o.promoted for o in outcomes)
    untrained = sum(o.version is None for o in outcomes)
    header = (
        f"Retrained {len(outcomes) - untrained} of {len(outcomes)} people: "
        f"{promoted} promoted, {len(outcomes) - untrained - promoted} not promoted, "
        f"{untrained} not trained."
    )
    budget = limit - units(header) - units(_more(len(lines))) - 1  # its newline too
    shown = that_fit(lines, budget, "\n")
    more = [_more(len(lines) - len(shown))] if len(shown) < len(lines) else []
    return "\n".join([header, *shown, *more])


def _more(count: int) -> str:
    return f"… and {count} more"


def summaries_text(summaries: tuple[Totals, Sequence[UserSummary]]) -> str:
    totals, people = summaries
    lines = [totals_line(totals)]
    for p in people[:50]:  # a chat message holds 4096 characters
        model = (
            "cold start"
            if p.active_version is None
            else f"v{p.active_version} AUC {'n/a' if p.active_auc is None else f'{p.active_auc:.2f}'}"
        )
        lines.append(f"{p.platform} {p.platform_user_id}: {plural(p.votes, 'vote')} · {model}")
    if len(people) > 50:
        lines.append(f"… and {len(people) - 50} more")
    return "\n".join(lines)


def backbone_text(outcome: BackboneOutcome) -> str:
    if outcome.version is None:
        return f"No fine-tune: {outcome.reason}."
    verdict = "promoted: new scores use it now" if outcome.promoted else "not promoted"
    return (
        f"CLIP fine-tune v{outcome.version} ({outcome.examples} votes, "
        f"{outcome.seconds:.0f} s): {verdict} — {outcome.reason}."
    )


def crowd_text(outcome: CrowdOutcome) -> str:
    if outcome.version is None:
        return f"No crowd model trained: {outcome.reason}."
    verdict = "promoted: newcomers are scored by it now" if outcome.promoted else "not promoted"
    return (
        f"Crowd model v{outcome.version} ({outcome.people} people): {verdict} — {outcome.reason}."
    )


def queued_text(queued: tuple[str, int] | None, target: str) -> str:
    """/retrain on a worker: what was handed to the trainers."""
    if queued is None:
        return f"I don't know user {target}."
    what, count = queued
    if what == "all":
        return f"Queued {plural(count, 'person', 'people')} with new votes for a trainer."
    if count == 0:
        return "Already queued (or nothing new to train on): a trainer will get to it."
    name = {"crowd": "the crowd model", "full": "a CLIP fine-tune"}.get(what, f"user {target}")
    return f"Queued {name} for a trainer; this worker does not train."
