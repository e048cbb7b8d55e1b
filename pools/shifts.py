"""A pool's office calendar and its reclaim policy per shift. Pure, no I/O.

A street office opens on working days at fixed hours. Public holidays close it on a
weekday, and make-up working days (调休) open it on a weekend: both are dates in the
calendar. Every moment falls in one shift: `office` (a working day, within opening
hours), `after_hours` (a working day, outside them) or `off_day` (weekends and holidays
that are not make-up days). A pool has one `IdlePolicy` per shift.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pools.reclaim import Action, IdlePolicy, PolicyError

E = TypeVar("E", bound=enum.StrEnum)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_SECONDS = 7 * 86400  # longer than any shift: a larger value is a typo


class Shift(enum.StrEnum):
    OFFICE = "office"
    AFTER_HOURS = "after_hours"
    OFF_DAY = "off_day"


@dataclass(frozen=True)
class Calendar:
    timezone: str = "Asia/Shanghai"
    working_days: tuple[int, ...] = (0, 1, 2, 3, 4)  # Monday = 0
    opens: time = time(8, 30)
    closes: time = time(17, 30)
    holidays: frozenset[date] = frozenset()  # working days the office is closed
    makeup_days: frozenset[date] = frozenset()  # days off the office is open (调休)

    def check(self) -> None:
        """Raises PolicyError for an unknown time zone or opening hours that close
        before they open."""
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise PolicyError(f"timezone: unknown time zone {self.timezone!r}") from e
        if not self.opens < self.closes:
            raise PolicyError("opens must be before closes (same day)")
        if any(d not in range(7) for d in self.working_days):
            raise PolicyError("working_days: 0 (Monday) to 6 (Sunday)")
        both = self.holidays & self.makeup_days
        if both:
            raise PolicyError(f"{min(both)} is both a holiday and a make-up working day")

    def local(self, now: datetime) -> datetime:
        return now.astimezone(ZoneInfo(self.timezone))

    def is_working_day(self, day: date) -> bool:
        if day in self.makeup_days:
            return True
        if day in self.holidays:
            return False
        return day.weekday() in self.working_days

    def shift_at(self, now: datetime) -> Shift:
        local = self.local(now)
        if not self.is_working_day(local.date()):
            return Shift.OFF_DAY
        if self.opens <= local.time() < self.closes:
            return Shift.OFFICE
        return Shift.AFTER_HOURS


# Defaults: a clerk may step away from the window for a while during office hours; after
# hours and on days off a desktop nobody uses goes back sooner.
DEFAULT_SHIFTS: Mapping[Shift, IdlePolicy] = {
    Shift.OFFICE: IdlePolicy(disconnect_grace_s=180, idle_warn_after_s=1800,
                             idle_countdown_s=120, idle_action=Action.DISCONNECT),
    Shift.AFTER_HOURS: IdlePolicy(disconnect_grace_s=180, idle_warn_after_s=900,
                                  idle_countdown_s=120, idle_action=Action.LOG_OFF),
    Shift.OFF_DAY: IdlePolicy(disconnect_grace_s=180, idle_warn_after_s=900,
                              idle_countdown_s=120, idle_action=Action.LOG_OFF),
}
DEDICATED_DEFAULT = IdlePolicy(disconnect_grace_s=1800, idle_warn_after_s=3600,
                               idle_countdown_s=120, idle_action=Action.DISCONNECT,
                               logoff_action=Action.SHUT_DOWN)


@dataclass(frozen=True)
class ReclaimPolicy:
    """A pool's calendar and one IdlePolicy per shift."""

    calendar: Calendar = field(default_factory=Calendar)
    shifts: Mapping[Shift, IdlePolicy] = field(default_factory=lambda: dict(DEFAULT_SHIFTS))

    @staticmethod
    def default(*, persistent: bool) -> ReclaimPolicy:
        if persistent:
            return ReclaimPolicy(shifts={s: DEDICATED_DEFAULT for s in Shift})
        return ReclaimPolicy()

    def check(self, *, persistent: bool) -> None:
        self.calendar.check()
        missing = [s.value for s in Shift if s not in self.shifts]
        if missing:
            raise PolicyError(f"no policy for shift(s) {', '.join(missing)}")
        for shift, policy in self.shifts.items():
            try:
                policy.check(persistent=persistent)
            except PolicyError as e:
                raise PolicyError(f"{shift.value}: {e}") from e

    def at(self, now: datetime) -> tuple[Shift, IdlePolicy]:
        shift = self.calendar.shift_at(now)
        return shift, self.shifts[shift]

    # -- as stored (the pool's JSON column) ------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        c = self.calendar
        return {
            "calendar": {
                "timezone": c.timezone,
                "working_days": [WEEKDAYS[d] for d in c.working_days],
                "opens": c.opens.strftime("%H:%M"), "closes": c.closes.strftime("%H:%M"),
                "holidays": sorted(d.isoformat() for d in c.holidays),
                "makeup_days": sorted(d.isoformat() for d in c.makeup_days)},
            "shifts": {s.value: {
                "disconnect_grace_s": p.disconnect_grace_s,
                "idle_warn_after_s": p.idle_warn_after_s,
                "idle_countdown_s": p.idle_countdown_s,
                "idle_action": p.idle_action.value,
                "logoff_action": p.logoff_action.value} for s, p in self.shifts.items()},
        }

    @staticmethod
    def from_json(data: Mapping[str, Any] | None, *, persistent: bool) -> ReclaimPolicy:
        """The stored form back; missing parts take the defaults. Raises PolicyError
        naming the field that is wrong."""
        base = ReclaimPolicy.default(persistent=persistent)
        if not data:
            return base
        try:
            cal = dict(data.get("calendar") or {})
            calendar = Calendar(
                timezone=str(cal.get("timezone", base.calendar.timezone)),
                working_days=tuple(_weekday(d) for d in cal["working_days"])
                if "working_days" in cal else base.calendar.working_days,
                opens=_time(cal.get("opens"), base.calendar.opens, "opens"),
                closes=_time(cal.get("closes"), base.calendar.closes, "closes"),
                holidays=frozenset(_date(d, "holidays") for d in cal.get("holidays", ())),
                makeup_days=frozenset(_date(d, "makeup_days")
                                      for d in cal.get("makeup_days", ())))
            shifts = dict(base.shifts)
            for name, values in dict(data.get("shifts") or {}).items():
                shift = _enum(Shift, name, "shift")
                before = shifts[shift]
                v = dict(values)
                shifts[shift] = IdlePolicy(
                    disconnect_grace_s=_seconds(v, "disconnect_grace_s",
                                                before.disconnect_grace_s),
                    idle_warn_after_s=_seconds(v, "idle_warn_after_s", before.idle_warn_after_s),
                    idle_countdown_s=_seconds(v, "idle_countdown_s", before.idle_countdown_s)
                    or 0,
                    idle_action=_enum(Action, v.get("idle_action", before.idle_action),
                                      "idle_action"),
                    logoff_action=_enum(Action, v.get("logoff_action", before.logoff_action),
                                        "logoff_action"))
        except (TypeError, AttributeError) as e:
            raise PolicyError(f"malformed policy: {e}") from e
        policy = ReclaimPolicy(calendar=calendar, shifts=shifts)
        policy.check(persistent=persistent)
        return policy


def _weekday(value: object) -> int:
    if isinstance(value, int) and 0 <= value <= 6:
        return value
    name = str(value).strip().lower()[:3]
    if name not in WEEKDAYS:
        raise PolicyError(f"working_days: {value!r} is not a day (mon..sun)")
    return WEEKDAYS.index(name)


def _time(value: object, default: time, name: str) -> time:
    if value is None:
        return default
    try:
        parsed = time.fromisoformat(str(value))
    except ValueError as e:
        raise PolicyError(f"{name}: {value!r} is not a time (HH:MM)") from e
    if parsed.tzinfo is not None:
        raise PolicyError(f"{name}: {value!r}: give the local time (HH:MM) without an "
                          "offset; the calendar's timezone says where")
    return parsed


def _date(value: object, name: str) -> date:
    try:
        return date.fromisoformat(str(value))
    except ValueError as e:
        raise PolicyError(f"{name}: {value!r} is not a date (YYYY-MM-DD)") from e


def _seconds(values: Mapping[str, Any], name: str, default: int | None) -> int | None:
    if name not in values:
        return default
    value = values[name]
    if value is None or value == "off":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PolicyError(f"{name}: {value!r} is not a number of seconds")
    try:
        seconds = int(value)
    except (ValueError, OverflowError) as e:
        raise PolicyError(f"{name}: {value!r} is not a number of seconds") from e
    if not 0 <= seconds <= MAX_SECONDS:
        raise PolicyError(f"{name} must be between 0 and {MAX_SECONDS} seconds (a week), "
                          "or off")
    return seconds


def _enum(kind: type[E], value: object, name: str) -> E:
    try:
        return kind(str(value))
    except ValueError as e:
        choices = ", ".join(m.value for m in kind)
        raise PolicyError(f"{name}: {value!r} is not one of {choices}") from e
