"""A street office's day at the windows, generated from a few parameters (pure, seeded).

Each clerk's day is a list of segments, in local time of the office:

* `work`: at the window, the desktop's console open, keyboard and mouse in use;
* `away_open`: stepped away (lunch) with the browser left open: the console stays open,
  no input;
* `away_closed`: the tab closed or the network gone: no console;
* `gone`: not at work (before arrival, after leaving).

and how the day ends: `log_off` (the page's button), `close` (the tab closed) or `leave`
(the browser left open, nobody there).

The model (every number is a field of `DayModel`, the defaults the office the benchmark
describes): morning clerks arrive around opening time (normal, mean 08:25, sd 12 min,
kept between 07:45 and 10:00); an afternoon group arrives around 13:30 (sd 10 min).
Most morning clerks take lunch (start normal around 11:55, sd 10 min, 40-70 min): half
of them close the tab, half leave it open. Each clerk has a few network blips (Poisson,
mean 0.6 a day) of 15-150 s at random working moments. The day ends around 17:35 (sd 10
min): 60 % log off, 25 % close the tab, 15 % walk away leaving it open.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from itertools import pairwise


class Mode(enum.StrEnum):
    GONE = "gone"
    WORK = "work"
    AWAY_OPEN = "away_open"
    AWAY_CLOSED = "away_closed"


class Ending(enum.StrEnum):
    LOG_OFF = "log_off"
    CLOSE = "close"
    LEAVE = "leave"


@dataclass(frozen=True)
class Segment:
    start: datetime
    end: datetime
    mode: Mode


@dataclass(frozen=True)
class ClerkDay:
    name: str
    segments: tuple[Segment, ...]  # in order, non-overlapping; gone outside them
    ending: Ending

    def mode_at(self, t: datetime) -> Mode:
        for seg in self.segments:
            if seg.start <= t < seg.end:
                return seg.mode
        return Mode.GONE

    @property
    def leaves_at(self) -> datetime:
        return self.segments[-1].end


@dataclass(frozen=True)
class DayModel:
    clerks: int = 40
    afternoon_share: float = 0.15
    arrive_mean: time = time(8, 25)
    arrive_sd_min: float = 12.0
    arrive_earliest: time = time(7, 45)
    arrive_latest: time = time(10, 0)
    afternoon_mean: time = time(13, 30)
    afternoon_sd_min: float = 10.0
    lunch_share: float = 0.8
    lunch_mean: time = time(11, 55)
    lunch_sd_min: float = 10.0
    lunch_min_min: float = 40.0
    lunch_max_min: float = 70.0
    lunch_closes_tab: float = 0.5
    blips_per_day: float = 0.6
    blip_min_s: float = 15.0
    blip_max_s: float = 150.0
    leave_mean: time = time(17, 35)
    leave_sd_min: float = 10.0
    log_off_share: float = 0.60
    close_share: float = 0.25  # the rest leave the browser open

    def describe(self) -> str:
        leave = 1 - self.log_off_share - self.close_share
        return (f"{self.clerks} clerks ({self.afternoon_share:.0%} on an afternoon shift); "
                f"arrivals around {self.arrive_mean:%H:%M} (sd {self.arrive_sd_min:g} min), "
                f"afternoon around {self.afternoon_mean:%H:%M}; lunch for "
                f"{self.lunch_share:.0%} of the morning clerks around "
                f"{self.lunch_mean:%H:%M}, {self.lunch_min_min:g}-{self.lunch_max_min:g} min, "
                f"{self.lunch_closes_tab:.0%} of them closing the tab; "
                f"{self.blips_per_day:g} network blips a clerk a day "
                f"({self.blip_min_s:g}-{self.blip_max_s:g} s); leaving around "
                f"{self.leave_mean:%H:%M}: {self.log_off_share:.0%} log off, "
                f"{self.close_share:.0%} close the tab, {leave:.0%} leave it open")


def _at(day: date, t: time, tz: object) -> datetime:
    return datetime.combine(day, t, tzinfo=tz)  # type: ignore[arg-type]


def _normal(rng: random.Random, day: date, mean: time, sd_min: float, tz: object,
            lo: time | None = None, hi: time | None = None) -> datetime:
    t = _at(day, mean, tz) + timedelta(minutes=rng.gauss(0, sd_min))
    if lo is not None:
        t = max(t, _at(day, lo, tz))
    if hi is not None:
        t = min(t, _at(day, hi, tz))
    return t.replace(second=int(t.second), microsecond=0)


def generate_day(model: DayModel, day: date, tz: object, seed: int) -> list[ClerkDay]:
    """Every clerk's day. `tz`: the office's time zone (a tzinfo)."""
    rng = random.Random(seed)
    clerks = []
    afternoon = round(model.clerks * model.afternoon_share)
    for i in range(model.clerks):
        late = i >= model.clerks - afternoon
        if late:
            arrive = _normal(rng, day, model.afternoon_mean, model.afternoon_sd_min, tz)
        else:
            arrive = _normal(rng, day, model.arrive_mean, model.arrive_sd_min, tz,
                             model.arrive_earliest, model.arrive_latest)
        leave = max(_normal(rng, day, model.leave_mean, model.leave_sd_min, tz),
                    arrive + timedelta(hours=1))
        # (start, end, mode) of the interruptions, in order
        gaps: list[tuple[datetime, datetime, Mode]] = []
        if not late and rng.random() < model.lunch_share:
            start = _normal(rng, day, model.lunch_mean, model.lunch_sd_min, tz)
            start = max(start, arrive + timedelta(minutes=30))
            end = start + timedelta(minutes=rng.uniform(model.lunch_min_min,
                                                        model.lunch_max_min))
            mode = Mode.AWAY_CLOSED if rng.random() < model.lunch_closes_tab else Mode.AWAY_OPEN
            if end < leave - timedelta(minutes=30):
                gaps.append((start, end, mode))
        for _ in range(_poisson(rng, model.blips_per_day)):
            at = arrive + timedelta(seconds=rng.uniform(600, (leave - arrive).total_seconds()
                                                        - 600))
            end = at + timedelta(seconds=rng.uniform(model.blip_min_s, model.blip_max_s))
            if all(end <= s or at >= e for s, e, _ in gaps):
                gaps.append((at, end, Mode.AWAY_CLOSED))
        gaps.sort()
        segments: list[Segment] = []
        cursor = arrive
        for start, end, mode in gaps:
            segments.append(Segment(cursor, start, Mode.WORK))
            segments.append(Segment(start, end, mode))
            cursor = end
        segments.append(Segment(cursor, leave, Mode.WORK))
        roll = rng.random()
        ending = (Ending.LOG_OFF if roll < model.log_off_share else
                  Ending.CLOSE if roll < model.log_off_share + model.close_share else
                  Ending.LEAVE)
        if ending is Ending.LEAVE:  # the browser stays open on an empty window
            segments.append(Segment(leave, _at(day, time(23, 59), tz), Mode.AWAY_OPEN))
        clerks.append(ClerkDay(f"clerk{i + 1:03d}", tuple(segments), ending))
    return clerks


def requests(clerks: list[ClerkDay], grace_s: float = 0.0) -> list[datetime]:
    """When clerks ask for a new desktop: at arrival, and on coming back to a tab closed
    for longer than `grace_s` (within the grace they get the same desktop back)."""
    out = []
    for c in clerks:
        out.append(c.segments[0].start)
        out += [b.start for a, b in pairwise(c.segments)
                if a.mode is Mode.AWAY_CLOSED and b.mode is Mode.WORK
                and (a.end - a.start).total_seconds() > grace_s]
    return sorted(out)


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth's method: fine for the small means used here
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1
