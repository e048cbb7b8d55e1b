"""Metering's arithmetic (broker/metering.py): desktop-hours split over the district's
days (a use over midnight counts in both, each its own part), sessions counted in the
range they began in, per office or per pool; desktops in use at each step of a day; the
query's checks. A property: however uses fall, the days' hours add up to the total."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.errors import BadRequest
from broker.metering import DISTRICT, Use, as_csv, in_use, parse_range, tally

TZ = ZoneInfo("Asia/Shanghai")
NAMES = {"jx": "建新街道", "window": "窗口桌面", "tools": "工具"}


def local(day: int, hour: float) -> datetime:
    """December `day` 2026 at `hour` o'clock in the district (UTC+8)."""
    return datetime(2026, 12, day, tzinfo=TZ) + timedelta(hours=hour)


def use(start: datetime, end: datetime, *, pool: str = "window", office: str | None = "jx",
        user: str = "clerk1") -> Use:
    return Use(pool=pool, office=office, username=user, start=start, end=end)


def test_hours_sessions_and_clerks_per_office() -> None:
    uses = [use(local(1, 9), local(1, 12)), use(local(1, 14), local(1, 15.5), user="clerk2"),
            use(local(1, 9), local(1, 10), pool="tools", office=None)]
    r = tally(uses, date(2026, 12, 1), date(2026, 12, 1), "office", TZ, NAMES)
    lines = {line.key: line for line in r.lines}
    assert set(lines) == {"jx", DISTRICT}
    assert (lines["jx"].name, lines["jx"].hours, lines["jx"].sessions,
            lines["jx"].clerks) == ("建新街道", 4.5, 2, 2)
    assert (lines[DISTRICT].hours, lines[DISTRICT].sessions) == (1.0, 1)
    assert r.lines[0].key == "jx", "most hours first"
    assert (r.total_hours, r.total_sessions) == (5.5, 3)


def test_per_pool() -> None:
    uses = [use(local(1, 9), local(1, 10)), use(local(1, 9), local(1, 11), pool="tools")]
    r = tally(uses, date(2026, 12, 1), date(2026, 12, 1), "pool", TZ, NAMES)
    assert [(line.key, line.name, line.hours) for line in r.lines] == [
        ("tools", "工具", 2.0), ("window", "窗口桌面", 1.0)]


def test_a_use_over_midnight_counts_in_each_day_its_part() -> None:
    late = use(local(1, 22), local(2, 1))  # 22:00 to 01:00 district time
    both = tally([late], date(2026, 12, 1), date(2026, 12, 2), "office", TZ, NAMES)
    assert both.daily == {date(2026, 12, 1): {"jx": 2.0}, date(2026, 12, 2): {"jx": 1.0}}
    assert both.lines[0].sessions == 1
    second = tally([late], date(2026, 12, 2), date(2026, 12, 2), "office", TZ, NAMES)
    assert (second.lines[0].hours, second.lines[0].sessions) == (1.0, 0), \
        "begun the day before: its hours count, its session does not"


def test_days_are_the_districts_not_utc() -> None:
    # 07:00 UTC on Dec 1 is 15:00 in the district; 17:00 UTC is 01:00 on Dec 2 there
    morning = use(datetime(2026, 12, 1, 7, tzinfo=UTC), datetime(2026, 12, 1, 8, tzinfo=UTC))
    night = use(datetime(2026, 12, 1, 17, tzinfo=UTC), datetime(2026, 12, 1, 18, tzinfo=UTC))
    r = tally([morning, night], date(2026, 12, 1), date(2026, 12, 1), "office", TZ, NAMES)
    assert (r.total_hours, r.total_sessions) == (1.0, 1)


def test_uses_outside_the_range_do_not_count() -> None:
    before = use(local(1, 9), local(1, 10))
    r = tally([before], date(2026, 12, 2), date(2026, 12, 3), "office", TZ, NAMES)
    assert r.lines == () and r.daily == {}


def test_desktops_in_use_through_a_day() -> None:
    uses = [use(local(1, 9), local(1, 11)), use(local(1, 10), local(1, 10.5), user="c2")]
    points = dict(in_use(uses, date(2026, 12, 1), 1800, TZ))
    assert len(points) == 48
    assert [points[local(1, h)] for h in (8.5, 9, 9.5, 10, 10.5, 11)] == [0, 1, 1, 2, 1, 0]


def test_today_stops_at_now() -> None:
    points = in_use([], date(2026, 12, 1), 3600, TZ, until=local(1, 9.5))
    assert [at for at, _ in points][-1] == local(1, 9)
    assert len(points) == 10


def test_the_csv_has_a_bom_a_line_each_and_a_total() -> None:
    r = tally([use(local(1, 9), local(1, 10.25))], date(2026, 12, 1), date(2026, 12, 1),
              "office", TZ, {"jx": "=建新"})
    text = as_csv(r)
    assert text.startswith("\ufefffrom,to,office,name,sessions,desktop_hours,clerks\r\n")
    rows = text.lstrip("\ufeff").splitlines()
    assert rows[1] == "2026-12-01,2026-12-01,jx,'=建新,1,1.25,1", "a formula is text"
    assert rows[2] == "2026-12-01,2026-12-01,total,,1,1.25,"


TODAY = date(2026, 12, 7)


@pytest.mark.parametrize(("params", "expected"), [
    ({}, (date(2026, 11, 8), TODAY, "office")),
    ({"from": "2026-12-01", "to": "2026-12-03", "by": "pool"},
     (date(2026, 12, 1), date(2026, 12, 3), "pool")),
    ({"to": "2026-01-31"}, (date(2026, 1, 2), date(2026, 1, 31), "office")),
])
def test_the_range_from_a_query(params: dict[str, str],
                                expected: tuple[date, date, str]) -> None:
    assert parse_range(params, TODAY) == expected


@pytest.mark.parametrize(("params", "says"), [
    ({"from": "2026-12-08", "to": "2026-12-07"}, "from must not be after to"),
    ({"from": "2025-01-01", "to": "2026-12-07"}, "at most 366 days"),
    ({"from": "2026-13-01"}, "from must be a date"),
    ({"to": "２０２６-12-01"}, "to must be a date"),
    ({"from": "yesterday"}, "from must be a date"),
    ({"by": "clerk"}, "by must be office or pool"),
])
def test_a_bad_range_is_refused_with_what_is_wrong(params: dict[str, str], says: str) -> None:
    with pytest.raises(BadRequest, match=says):
        parse_range(params, TODAY)


spans = st.tuples(st.integers(0, 5 * 24 * 60), st.integers(1, 3 * 24 * 60))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(spans, st.sampled_from(["jx", "hb", None])), max_size=12),
       st.integers(0, 4), st.integers(0, 3))
def test_the_days_add_up_to_the_total(uses: list[tuple[tuple[int, int], str | None]],
                                      first_offset: int, length: int) -> None:
    base = local(1, 0)
    made = [use(base + timedelta(minutes=s), base + timedelta(minutes=s + d), office=o)
            for (s, d), o in uses]
    first = date(2026, 12, 1) + timedelta(days=first_offset)
    last = first + timedelta(days=length)
    r = tally(made, first, last, "office", TZ, NAMES)
    days_total = sum(sum(v.values()) for v in r.daily.values())
    assert days_total == pytest.approx(r.total_hours)
    assert all(first <= day <= last for day in r.daily)
    assert r.total_hours <= len(made) * (length + 1) * 24 + 1e-9
    assert r.total_sessions == sum(
        1 for u in made if local(first.day, 0) <= u.start < local(last.day, 24))
