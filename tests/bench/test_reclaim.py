"""The simulated office day (bench/office_day.py, bench/reclaim.py): the day generator,
the slow fake host, the report. The simulation itself runs in `make bench`."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from bench.office_day import DayModel, Ending, Mode, generate_day, requests
from bench.reclaim import BootingHost, Run, SimClock, build_section, static_schedule
from pools.hypervisor import DesktopSpec, HostUnavailable, ImageDisk
from pools.spares import SpareSchedule

TZ = ZoneInfo("Asia/Shanghai")
DAY = date(2027, 3, 1)


def test_a_day_is_the_same_for_the_same_seed_and_well_formed() -> None:
    model = DayModel(clerks=40)
    day = generate_day(model, DAY, TZ, seed=7)
    assert day == generate_day(model, DAY, TZ, seed=7)
    assert day != generate_day(model, DAY, TZ, seed=8)
    assert len(day) == 40
    for clerk in day:
        segs = clerk.segments
        assert segs[0].mode is Mode.WORK  # a clerk's day starts at the window
        for a, b in pairwise(segs):
            assert a.start < a.end <= b.start  # in order, no overlap
        assert clerk.mode_at(segs[0].start - timedelta(seconds=1)) is Mode.GONE
        assert clerk.mode_at(segs[0].start) is Mode.WORK
        if clerk.ending is Ending.LEAVE:
            assert segs[-1].mode is Mode.AWAY_OPEN  # the browser stays open
        else:
            assert segs[-1].mode is Mode.WORK
    morning = [c for c in day if c.segments[0].start.time() < time(12)]
    afternoon = [c for c in day if c.segments[0].start.time() >= time(12)]
    assert len(afternoon) == round(40 * model.afternoon_share)
    earliest = datetime.combine(DAY, model.arrive_earliest, tzinfo=TZ)
    assert all(c.segments[0].start >= earliest for c in morning)
    lunches = [s for c in morning for s in c.segments
               if s.mode is not Mode.WORK and s.end - s.start >= timedelta(minutes=40)]
    assert 0.5 * len(morning) <= len(lunches) <= len(morning)
    # a request at each arrival and each return to a closed tab
    closed_returns = sum(1 for c in day for a, b in pairwise(c.segments)
                         if a.mode is Mode.AWAY_CLOSED and b.mode is Mode.WORK)
    assert len(requests(day)) == 40 + closed_returns


def test_the_booting_host_answers_once_the_boot_time_passed(guest_image: ImageDisk) -> None:
    clock = SimClock(datetime(2027, 3, 1, tzinfo=UTC))
    host = BootingHost(clock, 60, uri="fake://booting/system")
    image = host.publish_image("demo", 1, guest_image)
    spec = DesktopSpec(name="sim-a", desktop_id="a", pool_id="p", vcpus=1, memory_mib=128,
                       image=image)
    with pytest.raises(HostUnavailable, match="booting"):
        host.create_desktop(spec)
    clock.now += timedelta(seconds=59)
    with pytest.raises(HostUnavailable):
        host.create_desktop(spec)
    clock.now += timedelta(seconds=1)
    host.create_desktop(spec)
    assert host.running() == 1
    host.destroy_desktop("sim-a")  # remade (a revert): boots again
    with pytest.raises(HostUnavailable):
        host.create_desktop(spec)


def test_the_static_schedule_is_one_the_pool_accepts() -> None:
    schedule = SpareSchedule.from_json(static_schedule(40), max_size=50)
    assert [level.min_ready for level in schedule.levels] == [36, 4, 14, 4, 2, 0]


def test_report_compares_scenarios_with_one_always_on_pool() -> None:
    quiet = Run("min_ready", waits_s=[0.0, 0.0, 60.0, 120.0], morning_waits_s=[60.0, 120.0],
                vm_seconds=100 * 3600, peak_running=14, peak_assigned=12,
                timeline=[(8.0, 3, 2), (9.0, 14, 2)])
    warm = Run("static", waits_s=[0.0] * 4, morning_waits_s=[0.0, 0.0],
               vm_seconds=120 * 3600, peak_running=21, peak_assigned=12,
               timeline=[(8.0, 12, 10), (9.0, 14, 2)])
    section = build_section([quiet, warm], DayModel(clerks=12), 30, quick=True)
    rows = {row[0]: row[1:] for row in section.tables[0].rows}
    assert rows["VM-hours used in the day"] == [100.0, 120.0]
    assert rows["used / always-on pool of the peak size (12 desktops, 288 VM-h)"] == [
        "35%", "42%"]
    assert rows["wait p50 / p95, arrivals before 10:00 (s)"] == ["90.0 / 117.0", "0.0 / 0.0"]
    assert rows["requests that waited"] == [2, 0]
    assert section.summary.startswith("Against an always-on pool of 12 desktops (288 VM-h)")
    assert section.figures["static"]["always_on_hours"] == 288.0
    assert section.plots[0].series["min_ready"] == [(8.0, 3.0), (9.0, 14.0)]
