"""FINETUNE_CRON as the standard crontab line it is documented to be.

APScheduler 3's ``CronTrigger.from_crontab`` differs from crontab in two ways:
- it numbers weekdays from Monday = 0, crontab from Sunday = 0 (7 too), so "0 3 * * 0"
  would run on Mondays; the weekday field is turned into day names, which both spell alike;
- when both day of month and weekday are restricted, crontab runs on either, APScheduler
  only on both ("0 3 15 * 0": every Sunday and every 15th, not Sundays falling on a 15th).
"""

from __future__ import annotations

from datetime import tzinfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def crontab_trigger(line: str, timezone: tzinfo | None = None) -> BaseTrigger:
    """A trigger for a 5-field crontab line (minute hour day month weekday), in ``timezone``
    (default: the machine's); ValueError (with what is wrong) when it is not one."""
    fields = line.split()
    if len(fields) != 5:
        raise ValueError(
            f"needs 5 fields (minute hour day-of-month month weekday), got {len(fields)}"
        )
    minute, hour, day, month, weekday = fields
    days = _weekdays(weekday)

    def cron(day: str, day_of_week: str) -> CronTrigger:
        return CronTrigger(
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=day_of_week,
            timezone=timezone,
        )

    if not day.startswith("*") and not weekday.startswith("*"):
        return OrTrigger([cron(day, "*"), cron("*", days)])
    return cron(day, days)


def _weekdays(field: str) -> str:
    """crontab's weekday field as day names: numbers, names, ranges and steps expanded."""
    if field == "*":
        return "*"
    days: list[str] = []
    for item in field.split(","):
        span, _, step = item.partition("/")
        if span == "*":
            first, last = 0, 6
        else:
            ends = span.split("-", 1)
            first = _day_number(ends[0], ending=False)
            last = _day_number(ends[-1], ending=len(ends) == 2)
            if len(ends) == 1 and step:
                last = 7  # "1/2": from Monday on, every other day
        if not 0 <= first <= last <= 7:
            raise ValueError(f"weekday {span!r} is not within 0-7 (0 and 7 are Sunday)")
        if step and not (step.isascii() and step.isdigit() and int(step) > 0):
            raise ValueError(f"weekday step {step!r} is not a positive number")
        for number in range(first, last + 1, int(step) if step else 1):
            if _DAYS[number % 7] not in days:
                days.append(_DAYS[number % 7])
    return ",".join(days)


def _day_number(text: str, *, ending: bool) -> int:
    """A crontab weekday, 0-7 or a name; Sunday ending a range ("fri-sun") is 7."""
    name = text.lower()
    if name in _DAYS:
        return 7 if ending and name == "sun" else _DAYS.index(name)
    if text.isascii() and text.isdigit():
        return int(text)
    raise ValueError(f"weekday {text!r} is neither 0-7 nor a day name")
