"""The /stats picture: checked through the figure object, not just the PNG signature."""

from __future__ import annotations

import io
from datetime import datetime, timedelta

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text
from PIL import Image

from bot.charts import (
    DISLIKES,
    LIKES,
    NO_MODEL,
    NO_VOTES,
    NOT_CHECKED,
    UNTESTED,
    UNTESTED_IN_USE,
    X_MODELS,
    Y_MODELS,
    learning_curve_figure,
    learning_curve_png,
)
from domain import LearningCurve, ModelVersion, Vote

L, D, S = Vote.LIKE, Vote.DISLIKE, Vote.SUPER_LIKE
JARGON = ("AUC", "auc", "holdout", "held-out", "ECE", "metric", "version", "candidate")


def model(
    version: int, train_size: int, auc: float | None, status: str = "retired"
) -> ModelVersion:
    return ModelVersion(
        id=version,
        owner_user_id=1,
        kind="head",
        version=version,
        file_path=f"models/heads/1/v{version}.npz",
        encoder_version="clip",
        train_size=train_size,
        holdout_size=4,
        trained_through=0,
        status=status,
        created_at="2026-12-06T10:00:00.000Z",
        metrics={"auc": auc, "ece": 0.1, "active_auc": None, "train_seconds": 0.1},
    )


def votes(pattern: list[Vote], start: str, step: timedelta) -> list[tuple[str, Vote]]:
    t = datetime.fromisoformat(start)
    return [((t + step * i).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), v) for i, v in enumerate(pattern)]


ONE_AFTERNOON = votes([L, D, S, D, L, L, D, L], "2026-12-06T14:02:00", timedelta(minutes=2))
TEN_DAYS = votes([L, D, L, S, D, D, L] * 9, "2026-11-28T09:00:00", timedelta(hours=3, minutes=17))
FIVE_MODELS = [
    model(1, 6, None),  # its held-out votes were all likes: nothing to rank
    model(2, 14, 0.62),
    model(3, 25, 0.71),
    model(4, 40, 0.69, "rejected"),
    model(5, 52, 0.83, "active"),
]


def drawn(curve: LearningCurve, **kw: int) -> tuple[Figure, Axes, Axes]:
    fig = learning_curve_figure(curve, **kw)
    fig.draw_without_rendering()  # tick labels exist only once drawn
    models, history = fig.axes[:2]
    return fig, models, history


def texts(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def lines_by_label(ax: Axes) -> dict[str, Line2D]:
    return {str(line.get_label()): line for line in ax.get_lines()}


def points(line: Line2D) -> list[tuple[float, float]]:
    return [(round(x, 6), round(y, 6)) for x, y in np.asarray(line.get_xydata(), float).tolist()]


def xs(line: Line2D) -> list[float]:
    return list(np.asarray(line.get_xdata(), float).tolist())


def ys(line: Line2D) -> list[float]:
    return list(np.asarray(line.get_ydata(), float).tolist())


def assert_integer_ticks(ticks: object) -> None:
    values = [float(t) for t in np.asarray(ticks, float)]
    assert values and all(v.is_integer() for v in values), values


def test_five_models_in_plain_words_with_integer_ticks() -> None:
    fig, models, _ = drawn(LearningCurve(FIVE_MODELS, TEN_DAYS))
    assert models.get_xlabel() == X_MODELS and models.get_ylabel() == Y_MODELS
    assert models.get_title(loc="left") and "%" not in models.get_ylabel()
    visible = [t for t in models.get_xticks() if 0 <= t <= models.get_xlim()[1]]
    assert_integer_ticks(visible)
    assert models.get_xlim()[0] == 0  # "as votes grew", from none
    assert [t.get_text() for t in models.get_yticklabels()] == ["0%", "25%", "50%", "75%", "100%"]
    for word in JARGON:
        assert not any(word in text for text in texts(fig)), word
    assert any("coin toss" in text for text in texts(fig))  # the 50% line is explained


def test_every_model_is_drawn_where_its_votes_put_it() -> None:
    _, models, _ = drawn(LearningCurve(FIVE_MODELS, TEN_DAYS))
    lines = lines_by_label(models)
    assert points(lines["model in use"]) == [(52, 83)]
    assert points(lines["earlier model"]) == [(14, 62), (25, 71)]
    assert points(lines["tried, not better"]) == [(40, 69)]
    # The model without a score is there too, at its votes, not left out.
    assert xs(lines[UNTESTED]) == [6, 6]
    names = {t.get_text() for t in models.texts}
    assert {"v1", "v2", "v3", "v4", "v5"} <= names
    legend = models.get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()] == [
        "model in use",
        "earlier model",
        "tried, not better",
        UNTESTED,
    ]


def test_one_model_has_no_fractional_ticks() -> None:
    _, models, _ = drawn(LearningCurve([model(1, 12, 0.75, "active")], ONE_AFTERNOON))
    visible = [t for t in models.get_xticks() if 0 <= t <= models.get_xlim()[1]]
    assert_integer_ticks(visible)
    assert len(visible) >= 3  # not one lonely tick at 12


def test_a_first_model_that_could_not_be_checked_says_so() -> None:
    fig, models, _ = drawn(LearningCurve([model(1, 6, None, "active")], ONE_AFTERNOON))
    assert NOT_CHECKED in texts(fig)
    assert xs(lines_by_label(models)[UNTESTED_IN_USE]) == [6, 6]


def test_before_the_first_model_a_message_instead_of_an_empty_panel() -> None:
    _, models, _ = drawn(LearningCurve([], ONE_AFTERNOON), votes_needed=3)
    assert not models.axison and not models.get_lines()
    message = " ".join(t.get_text() for t in models.texts)
    assert NO_MODEL in message and "3 more votes" in message
    _, models, _ = drawn(LearningCurve([], ONE_AFTERNOON), votes_needed=1)
    assert "1 more vote." in " ".join(t.get_text() for t in models.texts)
    _, models, _ = drawn(LearningCurve([], ONE_AFTERNOON), votes_needed=0)  # due, not there yet
    assert "on its way" in " ".join(t.get_text() for t in models.texts)
    assert NO_MODEL in " ".join(
        t.get_text() for t in drawn(LearningCurve([], ONE_AFTERNOON))[1].texts
    )


def test_likes_and_dislikes_are_two_series_counted_up() -> None:
    _, _, history = drawn(LearningCurve(FIVE_MODELS, TEN_DAYS))
    lines = {str(line.get_label()).split(" ")[0]: line for line in history.get_lines()}
    assert set(lines) == {LIKES, DISLIKES}
    likes, dislikes = ys(lines[LIKES]), ys(lines[DISLIKES])
    liked = sum(v is not Vote.DISLIKE for _, v in TEN_DAYS)  # a super like is a like
    assert likes[-1] == liked and dislikes[-1] == len(TEN_DAYS) - liked
    assert likes == sorted(likes) and dislikes == sorted(dislikes) and likes[0] == dislikes[0] == 0
    assert lines[LIKES].get_label() == f"likes ({liked})"
    assert history.get_ylabel() and history.get_xlabel() == "date"
    assert_integer_ticks([t for t in history.get_yticks() if 0 <= t <= history.get_ylim()[1]])
    labels = [t.get_text() for t in history.get_xticklabels()]
    assert any("Dec" in label for label in labels) and not any(":" in label for label in labels)


def test_votes_of_one_afternoon_name_the_day() -> None:
    _, _, history = drawn(LearningCurve([], ONE_AFTERNOON))
    assert "6 Dec 2026" in history.get_xlabel()
    assert all(":" in t.get_text() for t in history.get_xticklabels() if t.get_text())


def test_no_votes_says_so() -> None:
    _, _, history = drawn(LearningCurve([model(1, 10, 1.0, "active")], []))
    assert not history.axison and NO_VOTES in " ".join(t.get_text() for t in history.texts)


def test_png_is_a_picture_of_the_figure() -> None:
    png = learning_curve_png(LearningCurve(FIVE_MODELS, TEN_DAYS))
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.size == (900, 380)
        assert len(im.convert("RGB").getcolors(1 << 16) or []) > 50  # drawn, not blank
