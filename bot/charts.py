"""The picture sent with /stats: how well the bot knows the person, and their votes so far.

Left: each model the person's votes trained, placed at the number of votes it learned from,
at how often it got a like-versus-dislike pair right on votes set aside for testing (the
ranking measure the bot promotes by, in words a person uses). Right: the person's likes
and dislikes, counted up over time. An empty side says in words what will appear there.

Rendered headless with matplotlib's object API (no pyplot, no global state): safe in a
worker thread.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from matplotlib import dates
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, PercentFormatter

from domain import LearningCurve, ModelVersion, Vote

TITLE_MODELS = "How well your model knows you"
TITLE_VOTES = "Your votes"
X_MODELS = "votes it learned from"
Y_MODELS = "got it right"
FOOTNOTE = (
    "Shown an image you liked and one you didn't, both set aside from its training:\n"
    "how often it scored the liked one higher. 50% = a coin toss."
)
NO_MODEL = "No model yet"
NOT_CHECKED = "Not checked yet: that takes a few likes and\ndislikes set aside to test it on."
UNTESTED = "model not checked yet (too few votes set aside)"
UNTESTED_IN_USE = "model in use, not checked yet"
NO_VOTES = "No votes yet"
LIKES, DISLIKES = "likes", "dislikes"

LIKE_COLOUR, DISLIKE_COLOUR = "#2e7d32", "#c62828"
IN_USE_COLOUR, EARLIER_COLOUR, GREY = "#2e7d32", "#1f77b4", "0.55"
# Above this many models, only the one in use is named next to its point.
NAME_POINTS_UP_TO = 8


@dataclass(frozen=True)
class _Point:
    version: int
    votes: int  # what it learned from
    right: float | None  # share of like/dislike pairs ranked right; None = not testable
    status: str  # "active", "retired" or "rejected"


def learning_curve_png(curve: LearningCurve, *, votes_needed: int | None = None) -> bytes:
    """The /stats picture as PNG bytes (see :func:`learning_curve_figure`)."""
    out = io.BytesIO()
    learning_curve_figure(curve, votes_needed=votes_needed).savefig(out, format="png")
    return out.getvalue()


def learning_curve_figure(curve: LearningCurve, *, votes_needed: int | None = None) -> Figure:
    """Models (left) and votes (right). ``votes_needed``: how many more votes the first model
    needs, said on the left while there is none (0: enough, it is being trained; None: not
    said)."""
    fig = Figure(figsize=(9, 3.8), dpi=100, layout="constrained")
    models, votes = fig.subplots(1, 2, width_ratios=(1.15, 1))
    _draw_models(models, [_point(m) for m in curve.versions], votes_needed)
    _draw_votes(votes, curve.votes)
    return fig


def _point(m: ModelVersion) -> _Point:
    right = m.metrics.get("auc")
    return _Point(m.version, m.train_size, None if right is None else float(right), m.status)


# One function: every element of the panel (message, points, labels, legend, axes) depends
# on which kinds of points there are, decided once at the top.
def _draw_models(ax: Axes, points: Sequence[_Point], votes_needed: int | None) -> None:
    ax.set_title(TITLE_MODELS, loc="left", fontsize=11)
    if not points:
        if votes_needed is None:
            _message(ax, f"{NO_MODEL}.\nKeep voting: each vote teaches it your taste.")
        elif votes_needed > 0:
            _message(ax, f"{NO_MODEL}.\nIt comes after {_more_votes(votes_needed)}.")
        else:
            _message(ax, f"{NO_MODEL}.\nYou have voted enough: it is on its way.")
        return

    ax.set_xlim(0, max(p.votes for p in points) * 1.1 + 1)
    ax.set_ylim(0, 105)
    ax.set_xlabel(X_MODELS)
    ax.set_ylabel(Y_MODELS)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
    ax.yaxis.set_major_locator(FixedLocator([0, 25, 50, 75, 100]))
    ax.yaxis.set_major_formatter(PercentFormatter(100, decimals=0))
    ax.grid(axis="y", color="0.92")
    ax.axhline(50, color=GREY, linestyle=":", linewidth=1, zorder=0)
    on_the_line = ax.get_yaxis_transform()  # x in axes fractions, y in data
    ax.text(
        0.99,
        50,
        "coin toss",
        transform=on_the_line,
        ha="right",
        va="bottom",
        color=GREY,
        fontsize=8,
    )
    ax.text(0, -0.2, FOOTNOTE, transform=ax.transAxes, va="top", fontsize=7.5, color="0.35")

    tested = [(p, p.right * 100) for p in points if p.right is not None]
    used = [(p, y) for p, y in tested if p.status != "rejected"]
    if len(used) > 1:  # the models that were used, in order: how it grew
        ax.plot([p.votes for p, _ in used], [y for _, y in used], "-", color="0.75", zorder=1)
    for status, label, style in _STYLES:
        group = [(p, y) for p, y in tested if _status(p) == status]
        if group:
            xs, ys = [p.votes for p, _ in group], [y for _, y in group]
            ax.plot(xs, ys, "o", linestyle="none", label=label, zorder=3, **style)
    for p in points:
        if p.right is None:  # a line at its votes: there is no score to put it at
            in_use = p.status == "active"
            colour, label = (IN_USE_COLOUR, UNTESTED_IN_USE) if in_use else (GREY, UNTESTED)
            ax.axvline(p.votes, color=colour, linestyle="--", linewidth=1.2, zorder=0, label=label)
    if not tested:
        ax.text(
            0.5,
            0.62,
            NOT_CHECKED,
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=9,
            color="0.3",
            linespacing=1.5,
            bbox={"facecolor": "white", "edgecolor": "none"},
        )

    for p in (
        points if len(points) <= NAME_POINTS_UP_TO else [p for p in points if p.status == "active"]
    ):
        if p.right is None:
            ax.annotate(
                f"v{p.version}",
                (p.votes, 100),
                xytext=(4, 0),
                textcoords="offset points",
                fontsize=8,
                color="0.3",
            )
        else:
            ax.annotate(
                f"v{p.version}",
                (p.votes, p.right * 100),
                xytext=(5, -12),
                textcoords="offset points",
                fontsize=8,
                color="0.3",
            )
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))  # one entry per kind of mark
    ax.legend(
        list(unique.values()),
        list(unique),
        loc="lower right",
        fontsize=7.5,
        markerscale=0.8,
        edgecolor="0.85",
    )


_STYLES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("active", "model in use", {"color": IN_USE_COLOUR, "markersize": 10}),
    ("retired", "earlier model", {"color": EARLIER_COLOUR, "markersize": 7}),
    ("rejected", "tried, not better", {"color": GREY, "markersize": 7, "markerfacecolor": "white"}),
)


def _status(p: _Point) -> str:
    return p.status if p.status in ("active", "rejected") else "retired"


def _more_votes(n: int) -> str:
    return f"{n} more vote" if n == 1 else f"{n} more votes"


def _draw_votes(ax: Axes, history: Sequence[tuple[str, Vote]]) -> None:
    ax.set_title(TITLE_VOTES, loc="left", fontsize=11)
    if not history:
        _message(ax, f"{NO_VOTES}.\nTap like or dislike under a score.")
        return
    times = [_parse_time(t) for t, _ in history]
    for label, colour, liked in ((LIKES, LIKE_COLOUR, True), (DISLIKES, DISLIKE_COLOUR, False)):
        xs, ys = [times[0]], [0]  # from the first vote, at 0
        for when, (_, vote) in zip(times, history, strict=True):
            if vote.liked == liked:
                xs.append(when)
                ys.append(ys[-1] + 1)
        xs.append(times[-1])
        ys.append(ys[-1])
        ax.step(
            [_to_num(x) for x in xs],
            ys,
            where="post",
            color=colour,
            linewidth=2,
            label=f"{label} ({ys[-1]})",
        )
    start, end = times[0], times[-1]
    pad = max((end - start) * 0.05, timedelta(minutes=5))
    ax.set_xlim(_to_num(start - pad), _to_num(end + pad))
    ax.set_ylim(0, None)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
    ax.set_ylabel("votes so far")
    ax.xaxis.set_major_locator(dates.AutoDateLocator(minticks=3, maxticks=6))  # type: ignore[no-untyped-call]
    if start.date() == end.date():
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{_from_num(x):%H:%M}"))
        ax.set_xlabel(f"time on {start:%a} {start.day} {start:%b %Y} (UTC)")
    else:
        ax.xaxis.set_major_formatter(
            FuncFormatter(lambda x, _: f"{_from_num(x).day} {_from_num(x):%b}")
        )
        ax.set_xlabel("date")
    ax.grid(axis="y", color="0.92")
    ax.legend(loc="upper left", fontsize=8, frameon=False)


def _message(ax: Axes, text: str) -> None:
    """Words instead of an empty panel."""
    ax.set_axis_off()
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=10,
        color="0.3",
        linespacing=1.6,
    )


def _to_num(when: datetime) -> float:
    """A time as a point on a date axis."""
    return float(dates.date2num(when))  # type: ignore[no-untyped-call]


def _from_num(x: float) -> datetime:
    """A point on a date axis back to its (UTC) time."""
    return dates.num2date(x)  # type: ignore[no-untyped-call, no-any-return]


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
