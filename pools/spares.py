"""How many spare desktops a pool keeps ready at a given moment. Pure, no I/O.

Booting takes time, and the doors of a street office open at a fixed hour: the spares
for the morning's arrivals must be warm before then. Two modes:

* static: a schedule of levels by kind of day (working day or day off, from the pool's
  calendar) and time, e.g. 40 from 08:45 on working days, 5 from 18:00. Before the day's
  first level, the pool's own `min_ready` holds.
* forecast: the level is the most clerks who got a desktop in the coming `lead_s` at the
  same time on the same weekday over the past `weeks` weeks (days of another kind, a
  holiday among Mondays, are left out). Never below the pool's `min_ready`; without
  any past day to learn from, the static schedule holds. Its reason lists the counts.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from pools.reclaim import PolicyError
from pools.shifts import Calendar

DAY_NAMES = ("Mondays", "Tuesdays", "Wednesdays", "Thursdays", "Fridays", "Saturdays",
             "Sundays")


class DayKind(enum.StrEnum):
    WORKING = "working"
    OFF = "off"


class SpareMode(enum.StrEnum):
    STATIC = "static"
    FORECAST = "forecast"


@dataclass(frozen=True)
class SpareLevel:
    days: DayKind
    at: time
    min_ready: int


@dataclass(frozen=True)
class SpareSchedule:
    mode: SpareMode = SpareMode.STATIC
    levels: tuple[SpareLevel, ...] = ()
    lead_s: int = 1800  # forecast: the arrivals of this long ahead are kept ready for
    weeks: int = 4  # forecast: how many past weeks it learns from

    def check(self, max_size: int) -> None:
        for level in self.levels:
            if not 0 <= level.min_ready <= max_size:
                raise PolicyError(f"spare level {level.min_ready} at {level.at:%H:%M}: "
                                  f"between 0 and the pool's max_size ({max_size})")
        if not 60 <= self.lead_s <= 6 * 3600:
            raise PolicyError("lead_s: between 60 s and 6 hours")
        if not 1 <= self.weeks <= 12:
            raise PolicyError("weeks: between 1 and 12")

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode.value, "lead_s": self.lead_s, "weeks": self.weeks,
                "levels": [{"days": v.days.value, "at": v.at.strftime("%H:%M"),
                            "min_ready": v.min_ready} for v in self.levels]}

    @staticmethod
    def from_json(data: Mapping[str, Any] | None, max_size: int) -> SpareSchedule:
        if not data:
            return SpareSchedule()
        try:
            mode = SpareMode(str(data.get("mode", SpareMode.STATIC.value)))
        except ValueError as e:
            raise PolicyError(f"mode: {data.get('mode')!r} is not static or forecast") from e
        levels = []
        for raw in data.get("levels") or ():
            try:
                item = dict(raw)
                at = time.fromisoformat(str(item["at"]))
                if at.tzinfo is not None:
                    raise ValueError("a local time has no offset")
                levels.append(SpareLevel(days=DayKind(str(item.get("days", "working"))),
                                         at=at, min_ready=int(item["min_ready"])))
            except (KeyError, ValueError, TypeError, OverflowError) as e:
                raise PolicyError(f"spare level {raw!r}: needs days (working|off), "
                                  "at (HH:MM) and min_ready (a number)") from e
        try:
            schedule = SpareSchedule(mode=mode, levels=tuple(levels),
                                     lead_s=int(data.get("lead_s", 1800)),
                                     weeks=int(data.get("weeks", 4)))
        except (ValueError, TypeError, OverflowError) as e:
            raise PolicyError(f"lead_s and weeks are numbers: {e}") from e
        schedule.check(max_size)
        return schedule


@dataclass(frozen=True)
class Level:
    min_ready: int
    reason: str  # English, local times; shown to admins


def spare_level(schedule: SpareSchedule, calendar: Calendar, base_min_ready: int,
                now: datetime, claims: Sequence[datetime] = ()) -> Level:
    """The spares to keep ready now. `claims`: when clerks got a desktop of this pool
    (any order, aware datetimes), at least over the past `schedule.weeks` weeks; only the
    forecast reads them."""
    static = _static_level(schedule, calendar, base_min_ready, now)
    if schedule.mode is SpareMode.STATIC:
        return static
    return _forecast_level(schedule, calendar, base_min_ready, now, claims, static)


def _day_kind(calendar: Calendar, day: date) -> DayKind:
    return DayKind.WORKING if calendar.is_working_day(day) else DayKind.OFF


def _static_level(schedule: SpareSchedule, calendar: Calendar, base: int,
                  now: datetime) -> Level:
    local = calendar.local(now)
    kind = _day_kind(calendar, local.date())
    current = [v for v in schedule.levels if v.days is kind and v.at <= local.time()]
    if not current:
        return Level(base, f"the pool's min_ready ({base})")
    level = max(current, key=lambda v: v.at)
    return Level(level.min_ready, f"schedule: {level.min_ready} from {level.at:%H:%M} on "
                                  f"{kind.value} days")


def _forecast_level(schedule: SpareSchedule, calendar: Calendar, base: int,
                    now: datetime, claims: Sequence[datetime], static: Level) -> Level:
    local = calendar.local(now)
    kind = _day_kind(calendar, local.date())
    lead = timedelta(seconds=schedule.lead_s)
    local_claims = sorted(calendar.local(c) for c in claims)
    counts: list[int] = []
    for weeks_back in range(1, schedule.weeks + 1):
        then = local - timedelta(weeks=weeks_back)
        if _day_kind(calendar, then.date()) is not kind:
            continue  # a holiday among working days (or a make-up day) teaches nothing
        counts.append(sum(1 for c in local_claims if then <= c < then + lead))
    if not counts:
        return Level(static.min_ready, f"forecast: no past {DAY_NAMES[local.weekday()]} "
                     f"like today to learn from; {static.reason}")
    want = max(max(counts), base)
    end = local + lead
    seen = ", ".join(str(n) for n in reversed(counts))
    return Level(want, f"forecast: {max(counts)} = the most clerks who got a desktop "
                 f"between {local:%H:%M} and {end:%H:%M} on the past {len(counts)} "
                 f"{DAY_NAMES[local.weekday()]} ({seen}, oldest first)"
                 + (f"; the pool's min_ready ({base}) is more" if base > max(counts) else ""))
