"""FINETUNE_CRON as the standard crontab line it is documented to be.

APScheduler 3's ``CronTrigger.from_crontab`` numbers weekdays from Monday = 0, crontab from
Sunday = 0 (7 too): "0 3 * * 0" would run on Mondays and "1-5" Tuesday to Saturday. So the
weekday field is turned into day names, which both spell alike."""

from __future__ import annotations

from datetime import tzinfo

from apscheduler.triggers.cron import CronTrigger

_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def crontab_trigger(line: str, timezone: tzinfo | None = None) -> CronTrigger:
    """A trigger for a 5-field crontab line (minute hour day month weekday), in ``timezone``
    (default: the machine's); ValueError (with what is wrong) when it is not one."""
    fields = line.split()
    if len(fields) != 5:
        raise ValueError(
            f"needs 5 fields (minute hour day-of-month month weekday), got {len(fields)}"
        )
    minute, hour, day, month, weekday = fields
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=_weekdays(weekday),
        timezone=timezone,
    )


def _weekdays(field: str) -> str:
    """crontab's weekday field as day names: numbers, ranges and steps expanded."""
    if field == "*":
        return "*"
    days: list[str] = []
    for item in field.split(","):
        span, _, step = item.partition("/")
        numeric = span.replace("-", "")
        if span != "*" and not (numeric.isascii() and numeric.isdigit()):
            days.append(item)  # names ("mon-fri"): the same in both
            continue
        if span == "*":
            first, last = 0, 6
        elif "-" in span:
            first, last = (int(part) for part in span.split("-", 1))
        else:
            first = int(span)
            last = 7 if step else first  # "1/2": from Monday on, every other day
        if not 0 <= first <= last <= 7:
            raise ValueError(f"weekday {span!r} is not within 0-7 (0 and 7 are Sunday)")
        for number in range(first, last + 1, int(step) if step else 1):
            if _DAYS[number % 7] not in days:
                days.append(_DAYS[number % 7])
    return ",".join(days)
