"""A street office's day replayed against the broker's real idle policy, spare levels and
assignment code, with a simulated clock and hypervisor: how many VM-hours the pool used
against an always-on pool of the same peak size, and how long clerks waited for a desktop.

What is real: the database (SQLite, migrated by Alembic), `broker.assignment.Assigner`
(claims, log-off), `pools.worker.PoolWorker` with its job runner, reclaimer (the idle
policy, `pools.reclaim.decide`, default policies per shift) and spare levels
(`pools.spares`: a static schedule, or the forecast from past claims). What is simulated:
the clock (moved in steps of STEP_S), the hypervisor (`FakeHypervisor`, whose desktops
take BOOT_S of simulated time to come up: `create_desktop` answers "still booting" until
then, and the job runner tries again the next step, as with a slow host) and the clerks
(bench/office_day.py: arrivals, lunch, blips, log-off, from parameters and a seed), whose
consoles write the signals the brokers write, through the same functions and with the
same conditions (`vdi.desktops`: console open, heartbeat, input, close).

Scenarios, the same day (same seed) for each:
* `min_ready`: no schedule, the pool keeps MIN_READY spares all day;
* `static`: an admin's schedule of spare levels (STATIC_LEVELS);
* `forecast`: levels from the claims of the past 4 weeks (4 more generated days of the
  same model with other seeds), at least min_ready.
A clerk's wait: from the first attempt to connect until a desktop was handed out (the
attempts are made every step: waits are multiples of STEP_S; 0 = a desktop at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select, update

from bench.common import Plot, Section, Table, percentile
from bench.office_day import ClerkDay, DayModel, Ending, Mode, generate_day, requests
from broker.assignment import Assigner, AssignmentError, NothingToLogOff
from harness.guest import guest_disk
from pools.calls import HostCalls
from pools.fake_hypervisor import FakeHypervisor
from pools.hypervisor import DesktopSpec, HostUnavailable
from pools.images import ImageStore
from pools.worker import PoolWorker
from vdi import desktops
from vdi.catalog import Catalog
from vdi.db import make_engine, migrate, session_factory
from vdi.domain import ConsoleEndpoint, ConsoleKind, DesktopState, Pool, PoolKind, Principal, Role
from vdi.models import ClaimRow, DesktopRow, PoolRow, ReclaimRow

REPO = Path(__file__).resolve().parents[1]
TZ = ZoneInfo("Asia/Shanghai")
DAY = date(2027, 3, 1)  # a Monday
STEP_S = 30
QUICK_STEP_S = 60
BOOT_S = 60  # a desktop (think Windows) is ready this long after it was asked for
PER_HOST_PARALLEL = 4  # desktops made at once (max_provisioning_per_host)
MIN_READY = 2
HISTORY_WEEKS = 4
SEED = 20270301
OFFICE_GRACE_S = 180  # the default office-hours disconnect grace (pools.shifts)
OFFICE_HOURS = (clock_time(8, 0), clock_time(18, 0))
STAFF = "cn=window-staff,ou=groups,dc=district,dc=example"
# (local time on working days, spares kept ready from then), as an admin would set them
STATIC_LEVELS = ((clock_time(7, 45), 0.9), (clock_time(9, 30), 0.1),
                 (clock_time(12, 30), 0.35), (clock_time(14, 0), 0.1),
                 (clock_time(17, 0), 0.05), (clock_time(18, 0), 0.0))
SCENARIOS = ("min_ready", "static", "forecast")


class SimClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class BootingHost(FakeHypervisor):
    """A host whose desktops take `boot_s` of simulated time to come up."""

    def __init__(self, clock: SimClock, boot_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._clock = clock
        self._boot = timedelta(seconds=boot_s)
        self._asked: dict[str, datetime] = {}

    def create_desktop(self, spec: DesktopSpec) -> ConsoleEndpoint:
        first = self._asked.setdefault(spec.name, self._clock())
        if self._clock() - first < self._boot:
            raise HostUnavailable(f"{spec.name} is still booting")
        del self._asked[spec.name]
        return super().create_desktop(spec)

    def destroy_desktop(self, name: str, keep_disk: bool = False) -> None:
        self._asked.pop(name, None)
        super().destroy_desktop(name, keep_disk)

    def running(self) -> int:
        """Desktops using the host: running, or booting (asked for, not up yet)."""
        return sum(1 for d in self.domains.values() if d.running) + len(self._asked)


@dataclass
class ClerkState:
    day: ClerkDay
    console: str | None = None  # the desktop whose console this clerk has open
    opened_at: datetime | None = None
    waiting_since: datetime | None = None  # first attempt of a pending request
    logged_off: bool = False


@dataclass
class Run:
    scenario: str
    waits_s: list[float] = field(default_factory=list)
    morning_waits_s: list[float] = field(default_factory=list)  # arrivals before 10:00
    vm_seconds: float = 0.0
    office_vm_seconds: float = 0.0  # 08:00-18:00 local
    gave_up: int = 0  # requests whose clerk left again before getting a desktop
    peak_running: int = 0
    peak_assigned: int = 0
    reclaims: int = 0
    timeline: list[tuple[float, int, int]] = field(default_factory=list)  # (h, running, ready)
    never_served: int = 0
    seconds: float = 0.0

    @property
    def vm_hours(self) -> float:
        return self.vm_seconds / 3600


    def wait(self, p: float, morning: bool = False) -> float:
        values = self.morning_waits_s if morning else self.waits_s
        return round(percentile(values, p), 1) if values else 0.0


def principal(name: str) -> Principal:
    return Principal(username=name, display_name=name, roles=frozenset({Role.STAFF}),
                     groups=frozenset({STAFF}))


def static_schedule(clerks: int) -> dict[str, Any]:
    return {"mode": "static", "levels": [
        {"days": "working", "at": at.strftime("%H:%M"), "min_ready": round(share * clerks)}
        for at, share in STATIC_LEVELS]}


def simulate(scenario: str, model: DayModel, step_s: int, work: Path) -> Run:
    """One simulated day of `scenario` in a fresh database under `work`."""
    started = time.monotonic()
    url = f"sqlite:///{work / f'{scenario}.sqlite3'}"
    migrate(url)
    db = session_factory(make_engine(url))
    start = datetime.combine(DAY, clock_time(0, 0), tzinfo=TZ).astimezone(UTC)
    clock = SimClock(start)
    host = BootingHost(clock, BOOT_S, uri=f"fake://{scenario}/system", memory_mib=262144,
                       cpus=64)
    calls = HostCalls({host.uri: host}, timeout_s=30)
    images = ImageStore(db)
    version, _ = images.publish(host, "demo", guest_disk())
    images.release("demo", version, by="bench")
    Catalog(db).save_pool(Pool(id="window", display_name="window", kind=PoolKind.FLOATING,
                               image="demo", vcpus=1, memory_mib=2048, min_ready=MIN_READY,
                               max_size=model.clerks + 10, entitled_groups=(STAFF,)))
    if scenario != "min_ready":
        schedule = static_schedule(model.clerks)
        if scenario == "forecast":
            schedule.update(mode="forecast", lead_s=1800, weeks=HISTORY_WEEKS)
        with db.begin() as s:
            s.execute(update(PoolRow).where(PoolRow.id == "window")
                      .values(spare_schedule=schedule))
    with db.begin() as s:  # past claims: the forecast's history (the others ignore it)
        for week in range(1, HISTORY_WEEKS + 1):
            past = generate_day(model, DAY - timedelta(weeks=week), TZ, SEED + week)
            s.add_all(ClaimRow(pool_id="window", at=t.astimezone(UTC))
                      for t in requests(past, grace_s=OFFICE_GRACE_S))
    clerks = [ClerkState(c) for c in generate_day(model, DAY, TZ, SEED)]
    assigner = Assigner(db, clock=clock)
    worker = PoolWorker(db, calls, images, domain_prefix="sim-", interval_s=step_s,
                        per_host_parallel=PER_HOST_PARALLEL, clock=clock,
                        host_check_interval_s=300, down_after_s=86400,
                        reconcile_every_s=1800, reclaim_every_s=step_s,
                        signal_lag_s=step_s, console_stale_s=3 * step_s)
    run = Run(scenario)
    step = timedelta(seconds=step_s)
    try:
        asyncio.run(_day(run, clerks, clock, assigner, worker, host, db, start, step))
    finally:
        calls.close()
    run.never_served = sum(1 for c in clerks if c.waiting_since is not None)
    with db() as s:
        run.reclaims = len(list(s.scalars(select(ReclaimRow.id))))
    run.seconds = time.monotonic() - started
    return run


async def _day(run: Run, clerks: list[ClerkState], clock: SimClock, assigner: Assigner,
               worker: PoolWorker, host: BootingHost, db: Any, start: datetime,
               step: timedelta) -> None:
    end = start + timedelta(days=1)
    ten = datetime.combine(DAY, clock_time(10, 0), tzinfo=TZ)
    t = start
    while t < end:
        clock.now = t
        local = t.astimezone(TZ)
        with db() as s:
            rows = {r.id: (r.assigned_user, r.kicked_at, r.state) for r in s.scalars(
                select(DesktopRow).where(DesktopRow.state == DesktopState.ASSIGNED.value))}
        opened: list[ClerkState] = []  # consoles opened in this step
        beating: list[str] = []  # desktops whose console is still open
        typed: list[str] = []  # desktops with input now
        closed: list[tuple[str, str]] = []  # (desktop, clerk)
        for c in clerks:
            mode = c.day.mode_at(local)
            if c.console is not None:  # did the broker take it away (idle policy)?
                user, kicked, _ = rows.get(c.console, (None, None, None))
                if user != c.day.name or (kicked is not None and c.opened_at is not None
                                          and kicked >= c.opened_at):
                    c.console = None
            if mode is Mode.WORK and c.console is None:
                if c.waiting_since is None:
                    c.waiting_since = t
                try:
                    got = assigner.assign("window", principal(c.day.name))
                except AssignmentError:
                    pass  # no desktop yet: the page tries again
                else:
                    wait = (t - c.waiting_since).total_seconds()
                    run.waits_s.append(wait)
                    if local < ten:
                        run.morning_waits_s.append(wait)
                    c.waiting_since = None
                    c.console, c.opened_at = got.id, t
                    opened.append(c)
            elif mode is Mode.WORK and c.console is not None:
                beating.append(c.console)
                typed.append(c.console)
            elif mode is Mode.AWAY_OPEN and c.console is not None:
                beating.append(c.console)
            elif mode in (Mode.AWAY_CLOSED, Mode.GONE):
                if c.waiting_since is not None:  # left before getting one: counted
                    wait = (t - c.waiting_since).total_seconds()
                    run.waits_s.append(wait)
                    if local < ten:
                        run.morning_waits_s.append(wait)
                    run.gave_up += 1
                c.waiting_since = None
                if c.console is not None:
                    closed.append((c.console, c.day.name))
                    c.console = None
                if (mode is Mode.GONE and c.day.ending is Ending.LOG_OFF and not c.logged_off
                        and local >= c.day.leaves_at):
                    c.logged_off = True
                    with contextlib.suppress(NothingToLogOff):  # reclaimed already
                        assigner.log_off("window", c.day.name)
        if opened or beating or typed or closed:
            with db.begin() as s:
                for c in opened:  # refused: the desktop was taken back meanwhile
                    assert c.console is not None
                    if desktops.open_console(s, c.console, c.day.name, ConsoleKind.VNC, t) is None:
                        c.console = None
                    else:
                        desktops.record_input(s, c.console, t)
                desktops.console_heartbeat(s, beating, t)
                for desktop_id in typed:
                    desktops.record_input(s, desktop_id, t)
                for desktop_id, name in closed:
                    desktops.close_console(s, desktop_id, name, t)
        await worker.tick()
        await worker.drain()
        running = host.running()
        run.vm_seconds += running * step.total_seconds()
        if OFFICE_HOURS[0] <= local.time() < OFFICE_HOURS[1]:
            run.office_vm_seconds += running * step.total_seconds()
        run.peak_running = max(run.peak_running, running)
        run.peak_assigned = max(run.peak_assigned, len(rows))
        if local.minute % 10 == 0 and local.second < step.total_seconds():
            with db() as s:
                ready = len(list(s.scalars(select(DesktopRow.id).where(
                    DesktopRow.state == DesktopState.READY.value))))
            run.timeline.append((round(local.hour + local.minute / 60, 3), running, ready))
        t += step


def run(quick: bool) -> Section:
    logging.getLogger("pools").setLevel(logging.ERROR)  # "still booting" retries: noise
    model = DayModel(clerks=12) if quick else DayModel()
    step_s = QUICK_STEP_S if quick else STEP_S
    runs = []
    with tempfile.TemporaryDirectory(prefix="vdi-bench-reclaim-") as tmp:
        for scenario in SCENARIOS:
            r = simulate(scenario, model, step_s, Path(tmp))
            print(f"reclaim: {scenario}: {r.vm_hours:.1f} VM-h, peak {r.peak_assigned} in "
                  f"use; wait p50 {r.wait(50)} s p95 {r.wait(95)} s; "
                  f"simulated in {r.seconds:.0f} s", flush=True)
            runs.append(r)
    return build_section(runs, model, step_s, quick=quick)


def build_section(runs: list[Run], model: DayModel, step_s: int, *, quick: bool) -> Section:
    by = {r.scenario: r for r in runs}
    # the always-on pool: as many desktops as were ever in use at once, running all day
    peak = max((r.peak_assigned for r in runs), default=0)
    always_on = peak * 24.0
    office_h = (OFFICE_HOURS[1].hour - OFFICE_HOURS[0].hour)
    rows: list[list[Any]] = [
        ["VM-hours used in the day", *(round(r.vm_hours, 1) for r in runs)],
        [f"used / always-on pool of the peak size ({peak} desktops, {always_on:.0f} VM-h)",
         *(f"{r.vm_hours / always_on:.0%}" if always_on else "–" for r in runs)],
        [f"VM-hours {OFFICE_HOURS[0]:%H:%M}-{OFFICE_HOURS[1]:%H:%M} / always-on then "
         f"({peak * office_h:.0f} VM-h)",
         *(f"{r.office_vm_seconds / 3600:.0f} "
           f"({r.office_vm_seconds / 3600 / (peak * office_h):.0%})" if peak else "–"
           for r in runs)],
        ["peak desktops running", *(r.peak_running for r in runs)],
        ["peak desktops in use", *(r.peak_assigned for r in runs)],
        ["requests for a desktop", *(len(r.waits_s) for r in runs)],
        ["wait p50 / p95, all requests (s)", *(f"{r.wait(50)} / {r.wait(95)}" for r in runs)],
        ["wait p50 / p95, arrivals before 10:00 (s)",
         *(f"{r.wait(50, True)} / {r.wait(95, True)}" for r in runs)],
        ["requests that waited", *(sum(1 for w in r.waits_s if w > 0) for r in runs)],
        ["of them, clerks who left again before a desktop came", *(r.gave_up for r in runs)],
        ["longest wait (s)", *(max(r.waits_s, default=0) for r in runs)],
        ["desktops the idle policy acted on (disconnect, log off)",
         *(r.reclaims for r in runs)],
        ["simulated in (s)", *(round(r.seconds, 1) for r in runs)],
    ]
    note = (f"One simulated working Monday ({DAY}) in {TZ.key}, steps of {step_s} s, a "
            f"desktop up {BOOT_S} s after it is asked for, {PER_HOST_PARALLEL} made at once. "
            f"Clerks: {model.describe()}. Default idle policies (docs/idle-policy.md). "
            f"min_ready: {MIN_READY} spares all day. static: "
            + ", ".join(f"{share:.0%} of the clerks from {at:%H:%M}"
                        for at, share in STATIC_LEVELS)
            + f". forecast: the most claims in the next 30 min on the past {HISTORY_WEEKS} "
            "Mondays (generated with other seeds), static levels where no history. "
            "Waits are counted from the first attempt, in steps: 0 means a ready desktop; a "
            "clerk who stepped away before one came counts with the time waited till then. "
            "VM-hours count desktops booting as well as running. The forecast's history "
            "counts arrivals and returns after a closed tab longer than the office grace "
            f"({OFFICE_GRACE_S} s), as the broker records claims; its weeks come from the "
            "same model as the day (a steady office). Clerks type whenever at the window, "
            "so no false idle reclaim can happen here (the policy's cases are in the tests). "
            "The always-on pool keeps as many desktops running for 24 h as were ever in use "
            "at once (the same clerks in every scenario); it never makes a clerk wait.")
    table = Table(title="A street-office day: VM-hours and waits",
                  columns=["", *(r.scenario for r in runs)], rows=rows, note=note)
    timeline = Plot(filename="reclaim-day.png", title="Desktops running over the day",
                    xlabel="local hour", ylabel="desktops running", kind="line",
                    series={r.scenario: [(h, float(n)) for h, n, _ in r.timeline]
                            for r in runs})
    f, s = by.get("forecast"), by.get("static")
    summary = f"Against an always-on pool of {peak} desktops ({always_on:.0f} VM-h): " + "; ".join(
        f"{r.scenario}: {r.vm_hours:.0f} VM-h ({r.vm_hours / always_on:.0%}), wait p50 "
        f"{r.wait(50)} s, p95 {r.wait(95)} s" for r in runs if always_on)
    if f and s:
        summary += (f". Forecast vs static: p95 wait at arrival {f.wait(95, True)} s vs "
                    f"{s.wait(95, True)} s")
    return Section(name="reclaim", title="Idle reclaim and spare levels over a simulated day",
                   summary=summary + ".", tables=[table], plots=[timeline],
                   figures={r.scenario: {"vm_hours": round(r.vm_hours, 2),
                                         "always_on_hours": always_on,
                                         "wait_p50_s": r.wait(50), "wait_p95_s": r.wait(95),
                                         "arrival_wait_p95_s": r.wait(95, True),
                                         "requests": len(r.waits_s),
                                         "office_vm_hours": round(r.office_vm_seconds / 3600,
                                                                  2),
                                         "gave_up": r.gave_up,
                                         "never_served": r.never_served}
                            for r in runs})
