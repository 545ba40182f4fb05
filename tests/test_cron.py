"""FINETUNE_CRON is read as standard crontab (0 and 7 are Sunday), and checked at start-up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from bot.cron import crontab_trigger
from bot.settings import Settings

TUESDAY = datetime(2026, 12, 1, 12, tzinfo=UTC)


def fire_days(line: str, n: int = 7) -> list[str]:
    trigger = crontab_trigger(line, UTC)
    days, after = [], TUESDAY
    for _ in range(n):
        fire = trigger.get_next_fire_time(None, after)
        assert fire is not None
        days.append(fire.strftime("%a"))
        after = fire + timedelta(minutes=1)
    return days


@pytest.mark.parametrize(
    ("weekday", "days"),
    [
        ("0", ["Sun"] * 3),
        ("7", ["Sun"] * 3),
        ("1-5", ["Wed", "Thu", "Fri"]),  # from Tuesday noon: the next weekdays
        ("5-7", ["Fri", "Sat", "Sun"]),
        ("*/2", ["Thu", "Sat", "Sun"]),  # crontab: Sun, Tue, Thu, Sat
        ("mon,wed", ["Wed", "Mon", "Wed"]),
        ("*", ["Wed", "Thu", "Fri"]),
    ],
)
def test_weekdays_are_counted_from_sunday_as_in_crontab(weekday: str, days: list[str]) -> None:
    assert fire_days(f"0 3 * * {weekday}", 3) == days


@pytest.mark.parametrize("line", ["0 3 * *", "0 3 * * 8", "0 25 * * *", "every night"])
def test_a_bad_line_is_refused_when_the_settings_are_read(line: str) -> None:
    with pytest.raises(ValidationError, match="finetune_cron"):
        Settings(telegram_bot_token="1:x", finetune_cron=line)  # type: ignore[call-arg]


def test_blank_means_never() -> None:
    assert Settings(telegram_bot_token="1:x", finetune_cron="  ").finetune_cron == ""  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("weekday", "days"),
    [
        ("sun-tue", {"Sun", "Mon", "Tue"}),
        ("1-fri", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
        ("fri-sun", {"Fri", "Sat", "Sun"}),
    ],
)
def test_weekday_names_and_numbers_mix_as_in_crontab(weekday: str, days: set[str]) -> None:
    assert set(fire_days(f"0 3 * * {weekday}", 7)) == days


def test_day_of_month_and_weekday_both_set_run_on_either() -> None:
    trigger = crontab_trigger("0 3 15 * 0", UTC)
    fires, after = [], TUESDAY
    for _ in range(4):
        fire = trigger.get_next_fire_time(None, after)
        assert fire is not None
        fires.append(fire.strftime("%a %d"))
        after = fire + timedelta(minutes=1)
    assert fires == ["Sun 06", "Sun 13", "Tue 15", "Sun 20"]  # crontab: every Sunday and the 15th
