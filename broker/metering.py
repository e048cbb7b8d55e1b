"""Metering (per-department accounting): desktop-hours and sessions per street office and
per pool over a range of days, and desktops in use through one day. Both add up desktop
uses (vdi.uses: a clerk's console open on a desktop). Days are the district's calendar
days (`timezone`); a use over midnight counts in both days, each its own part.

The arithmetic is pure (`tally`, `in_use`); `Metering` reads the uses and records who
exported what.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from broker.access import roles_text
from broker.audit_trail import cell
from broker.blocking import Blocking
from broker.errors import BadRequest
from vdi.audit import AuditLog
from vdi.domain import Principal, utc_now
from vdi.models import DesktopUseRow, OfficeRow, PoolRow

MAX_DAYS = 366
GROUPINGS = ("office", "pool")
STEPS_S = (60, 300, 900, 1800, 3600)
DISTRICT = ""  # the office key of pools that belong to no office


@dataclass(frozen=True)
class Use:
    pool: str
    office: str | None
    username: str
    start: datetime
    end: datetime  # when it ended, or its last sign of life


@dataclass(frozen=True)
class Line:
    """One office's or pool's figures over the range."""

    key: str  # an office id (DISTRICT: the district's own pools) or a pool id
    name: str
    sessions: int  # uses begun in the range
    hours: float  # desktop-hours inside the range
    clerks: int  # different clerks with time in the range


@dataclass(frozen=True)
class Report:
    first: date
    last: date
    by: str
    lines: tuple[Line, ...]
    # per day, each line's hours: {day: {key: hours}}; days without use are absent
    daily: dict[date, dict[str, float]] = field(default_factory=dict)

    @property
    def total_hours(self) -> float:
        return sum(line.hours for line in self.lines)

    @property
    def total_sessions(self) -> int:
        return sum(line.sessions for line in self.lines)


def day_bounds(first: date, last: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The instants the district's days `first` .. `last` (inclusive) begin and end."""
    return (datetime.combine(first, time(), tz),
            datetime.combine(last + timedelta(days=1), time(), tz))


def _overlap_s(use: Use, start: datetime, end: datetime) -> float:
    return max(0.0, (min(use.end, end) - max(use.start, start)).total_seconds())


def tally(uses: Iterable[Use], first: date, last: date, by: str, tz: ZoneInfo,
          names: dict[str, str]) -> Report:
    """The figures of `uses` over the days `first` .. `last`, per office or per pool
    (`by`). A use counts as a session in the range it began in; its hours are the part
    inside the range, split over the days it spans."""
    start, end = day_bounds(first, last, tz)
    seconds: dict[str, float] = {}
    sessions: dict[str, int] = {}
    clerks: dict[str, set[str]] = {}
    daily: dict[date, dict[str, float]] = {}
    for use in uses:
        inside = _overlap_s(use, start, end)
        began_inside = start <= use.start < end
        if inside <= 0 and not began_inside:
            continue
        key = use.pool if by == "pool" else (use.office or DISTRICT)
        seconds[key] = seconds.get(key, 0.0) + inside
        sessions[key] = sessions.get(key, 0) + (1 if began_inside else 0)
        clerks.setdefault(key, set()).add(use.username)
        day = max(use.start, start).astimezone(tz).date()
        while day <= last:
            day_start, day_end = day_bounds(day, day, tz)
            if day_start >= use.end:
                break
            part = _overlap_s(use, day_start, day_end)
            if part > 0:
                per_day = daily.setdefault(day, {})
                per_day[key] = per_day.get(key, 0.0) + part / 3600
            day += timedelta(days=1)
    lines = tuple(sorted(
        (Line(key=k, name=names.get(k, k), sessions=sessions[k], hours=seconds[k] / 3600,
              clerks=len(clerks[k])) for k in seconds),
        key=lambda line: (-line.hours, line.key)))
    return Report(first=first, last=last, by=by, lines=lines, daily=daily)


def in_use(uses: Iterable[Use], day: date, step_s: int, tz: ZoneInfo,
           until: datetime | None = None) -> list[tuple[datetime, int]]:
    """How many uses were going on at each step of the district's day `day` (a use
    counts at an instant it began at or before and had not ended by), up to `until`
    (now, for today)."""
    start, end = day_bounds(day, day, tz)
    if until is not None:
        end = min(end, until + timedelta(microseconds=1))
    spans = [(u.start, u.end) for u in uses]
    points: list[tuple[datetime, int]] = []
    at = start
    while at < end:
        points.append((at, sum(1 for s, e in spans if s <= at < e)))
        at += timedelta(seconds=step_s)
    return points


def parse_day(text: str | None, what: str) -> date:
    """A YYYY-MM-DD from a query; BadRequest naming `what` when it is not one."""
    if text is None or len(text) != 10 or not text.isascii():
        raise BadRequest(f"{what} must be a date as YYYY-MM-DD.")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{what} must be a date as YYYY-MM-DD.") from None


def parse_range(params: dict[str, str], today: date) -> tuple[date, date, str]:
    """`from`, `to` (inclusive; default: the last 30 days to today) and `by` (office or
    pool) from a query; BadRequest naming what is wrong."""
    last = parse_day(params["to"], "to") if "to" in params else today
    first = parse_day(params["from"], "from") if "from" in params \
        else last - timedelta(days=29)
    by = params.get("by", "office")
    if by not in GROUPINGS:
        raise BadRequest("by must be office or pool.")
    if first > last:
        raise BadRequest("from must not be after to.")
    if (last - first).days >= MAX_DAYS:
        raise BadRequest(f"A report covers at most {MAX_DAYS} days.")
    return first, last, by


def as_csv(report: Report) -> str:
    """UTF-8 CSV with a byte-order mark (Excel and WPS read Chinese right): one row per
    office or pool, then a total row."""
    out = io.StringIO()
    out.write("\ufeff")
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(["from", "to", report.by, "name", "sessions", "desktop_hours", "clerks"])
    for line in report.lines:
        w.writerow([report.first.isoformat(), report.last.isoformat(), cell(line.key),
                    cell(line.name), line.sessions, f"{line.hours:.2f}", line.clerks])
    w.writerow([report.first.isoformat(), report.last.isoformat(), "total", "",
                report.total_sessions, f"{report.total_hours:.2f}", ""])
    return out.getvalue()


def read_uses(db: sessionmaker[Session], start: datetime, end: datetime, *, now: datetime,
              stale: timedelta) -> list[Use]:
    """The uses with time between `start` and `end`; one still open whose console was
    seen within `stale` goes on until `now` (the heartbeat lags). Blocks on the
    database."""
    last_seen = func.coalesce(DesktopUseRow.ended_at, DesktopUseRow.seen_at)
    with db() as s:
        rows = s.execute(select(DesktopUseRow.pool_id, DesktopUseRow.office,
                                DesktopUseRow.username, DesktopUseRow.started_at,
                                DesktopUseRow.ended_at, DesktopUseRow.seen_at)
                         .where(DesktopUseRow.started_at < end,
                                or_(DesktopUseRow.started_at >= start, last_seen > start))
                         ).all()
    def end_of(ended: datetime | None, seen: datetime) -> datetime:
        if ended is not None:
            return ended
        return max(now, seen) if now - seen <= stale else seen
    return [Use(pool=p, office=o, username=u, start=st, end=end_of(e, seen))
            for p, o, u, st, e, seen in rows]


def read_names(db: sessionmaker[Session]) -> dict[str, str]:
    """Display names of pools and offices by id (the district's own: DISTRICT)."""
    with db() as s:
        pools = {k: v for k, v in s.execute(select(PoolRow.id, PoolRow.display_name))}
        offices = {k: v for k, v in s.execute(select(OfficeRow.id, OfficeRow.name))}
    return {**pools, **offices}


class Metering:
    def __init__(self, *, blocking: Blocking, db: sessionmaker[Session], audit: AuditLog,
                 timezone: str, console_stale_s: float,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self._blocking = blocking
        self._stale = timedelta(seconds=console_stale_s)
        self._db = db
        self._audit = audit
        self._tz = ZoneInfo(timezone)
        self._clock = clock

    def today(self) -> date:
        return self._clock().astimezone(self._tz).date()

    async def report(self, first: date, last: date, by: str) -> Report:
        def read() -> Report:
            start, end = day_bounds(first, last, self._tz)
            uses = read_uses(self._db, start, end, now=self._clock(), stale=self._stale)
            return tally(uses, first, last, by, self._tz, read_names(self._db))
        return await self._blocking.db(read)

    async def export(self, who: Principal, first: date, last: date, by: str,
                     source: str) -> str:
        """The report as CSV; the export is on record."""
        report = await self.report(first, last, by)
        await self._blocking.db(lambda: self._audit.record(
            actor=who.username, role=roles_text(who), action="metering-export",
            target="metering", source=source, outcome="ok",
            detail=f"{first.isoformat()}..{last.isoformat()} by {by}: "
                   f"{len(report.lines)} lines"))
        return as_csv(report)

    async def in_use(self, day: date, step_s: int) -> list[tuple[datetime, int]]:
        """Desktops in use at each step of the district's day `day`, up to now."""
        def read() -> list[tuple[datetime, int]]:
            now = self._clock()
            start, end = day_bounds(day, day, self._tz)
            uses = read_uses(self._db, start, end, now=now, stale=self._stale)
            return in_use(uses, day, step_s, self._tz, until=now)
        return await self._blocking.db(read)
