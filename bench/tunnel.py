"""Benchmark section: the broker's console tunnel vs websockify vs a raw TCP relay.

One run starts every party on loopback, each in its own process:

* the **fake desktop** (bench.tunnel_backend): an RFB 3.8 VNC server with VNC
  authentication for the broker, and a plain TCP port with the same behaviour for the
  others;
* the **broker** (bench.tunnel_broker): the real app in uvicorn with `vdi serve`'s options,
  real slapd for the sign-in, a fake hypervisor pointing at the fake desktop; every
  tunnel gets its token through the API, as the browser does;
* **websockify** 0.13 from PyPI, twice: with numpy and without (bench.tunnel_websockify
  proves which path it took);
* the **raw relay** (bench.tunnel_relay): asyncio protocols on uvloop, no framing - the
  physical limit for a relay written in Python here; and **direct** TCP to the fake
  desktop as the floor for latency.

The load generator is this process (uvloop, the `websockets` client for every websocket
proxy). It measures RSS per 100 idle tunnels first (fresh processes), then round trips of
an 8-byte KeyEvent, throughput both ways with 1 and 10 tunnels, and 200 tunnels paced at
2 MB/s each. The paths take turns, round after round, and every window records the CPU
of each party (bench.tunnel_procs.CpuProbe), including other processes on the machine:
a window they disturbed is measured again (within a budget) and the worst disturbance
kept is printed with the figures. Needs the `bench` extra (websockify, numpy):
`pip install -e '.[bench]'`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import uvloop

from bench import tunnel_client as client
from bench.common import Section
from bench.tunnel_client import Window
from bench.tunnel_procs import (
    REPO,
    CpuProbe,
    Running,
    Usage,
    free_port,
    start,
    usage,
    wait_for_quiet,
)
from bench.tunnel_report import (
    BROKER,
    DIRECT,
    FULL,
    MB,
    PACED_FRAME,
    PACED_RATE,
    QUICK,
    RAW,
    WSFY_NUMPY,
    WSFY_PLAIN,
    Paced,
    Plan,
    Rate,
    Results,
    RoundTrips,
    build_section,
    median_rate,
)
from bench.tunnel_wire import upstream_chunks

if TYPE_CHECKING:
    from harness.ldap_server import SlapdServer

T = TypeVar("T")
WORKDIR = REPO / "var" / "bench" / "tunnel"


@dataclass
class Harness:
    """Every process of the run; `stop()` ends them all (also after a failure)."""

    workdir: Path
    broker_root: Path = REPO  # another checkout, to measure its broker (before/after figures)
    extra_brokers: dict[str, Path] = field(default_factory=dict)  # name -> checkout
    running: list[Running] = field(default_factory=list)
    slapd: SlapdServer | None = None
    targets: dict[str, client.Target] = field(default_factory=dict)
    numpy_paths: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        from harness.ldap_server import DEMO_PASSWORD, GROUP_BASE, SlapdServer

        for package in ("websockify", "numpy"):
            if importlib.util.find_spec(package) is None:
                raise RuntimeError(f"{package} is missing: pip install -e '.[bench]'")

        self.workdir.mkdir(parents=True)
        logs = self.workdir / "logs"
        rfb_port, plain_port = free_port(), free_port()
        password_file = self.workdir / "broker" / "vnc-password"
        password_file.parent.mkdir(parents=True)
        self.running.append(start("backend", [
            "bench.tunnel_backend", "--rfb-port", str(rfb_port), "--plain-port",
            str(plain_port), "--password-file", str(password_file)],
            port=plain_port, logdir=logs))
        self.slapd = SlapdServer()
        for name, root in {BROKER: self.broker_root, **self.extra_brokers}.items():
            broker_port = free_port()
            broker = start(name, [
                "bench.tunnel_broker", "--workdir", str(password_file.parent / name),
                "--password-file", str(password_file), "--port", str(broker_port),
                "--vnc-port", str(rfb_port), "--ldap",
                json.dumps(self.slapd.settings_overrides()),
                "--staff-group", f"cn=window-staff,{GROUP_BASE}"], port=broker_port,
                logdir=logs, cwd=root)
            self.running.append(broker)
            tokens = client.BrokerTokens(f"http://127.0.0.1:{broker_port}", "zhangsan",
                                         DEMO_PASSWORD, "bench")
            self.targets[name] = client.Target(name, broker_port, websocket=True, rfb=True,
                                               tokens=tokens, pid=broker.pid)
        for name, flags in ((WSFY_NUMPY, []), (WSFY_PLAIN, ["--no-numpy"])):
            port = free_port()
            proc = start(name.replace(" ", "_"), [
                "bench.tunnel_websockify", *flags, "--", f"127.0.0.1:{port}",
                f"127.0.0.1:{plain_port}"], port=port, logdir=logs)
            self.running.append(proc)
            first = proc.output_tail(1000).splitlines()[0]
            self.numpy_paths[name] = first.removeprefix("numpy=")
            self.targets[name] = client.Target(name, port, websocket=True, pid=proc.pid)
        if self.numpy_paths[WSFY_PLAIN] != "none" or self.numpy_paths[WSFY_NUMPY] == "none":
            raise RuntimeError(f"websockify took the wrong numpy paths: {self.numpy_paths}")
        relay_port = free_port()
        relay = start("relay", ["bench.tunnel_relay", "--port", str(relay_port),
                                "--target-port", str(plain_port)], port=relay_port, logdir=logs)
        self.running.append(relay)
        self.targets[RAW] = client.Target(RAW, relay_port, websocket=False, pid=relay.pid)
        self.targets[DIRECT] = client.Target(DIRECT, plain_port, websocket=False)

    def probe(self, target: client.Target) -> CpuProbe:
        return CpuProbe(proxy=target.pid, backend=self.running[0].pid)

    def stop(self) -> None:
        """Stop everything, even if stopping one part fails; then raise the first error."""
        errors: list[Exception] = []
        for proc in reversed(self.running):
            try:
                proc.stop()
            except Exception as e:  # keep stopping the others
                errors.append(e)
        if self.slapd is not None:
            try:
                self.slapd.stop()
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]


# -- measurements ---------------------------------------------------------------------------


@dataclass
class Retries:
    """Windows measured again because other processes were busy during them (a shared
    machine), up to a budget so that a machine that never calms down still finishes."""

    budget: int
    used: int = 0

    def again(self, other_cores: float) -> bool:
        if other_cores < DISTURBED_CORES or self.used >= self.budget:
            return False
        self.used += 1
        return True


DISTURBED_CORES = 0.25  # other processes busier than this during a window: measure again


async def measure_throughput(h: Harness, plan: Plan,
                             retries: Retries) -> dict[str, dict[str, Rate]]:
    """Rates per target and case ("down x1", "up x10", ...). Targets take turns, round
    after round, so that a burst of other work on the machine hits one run of each
    rather than every run of one; disturbed windows are measured again; the median run
    is kept."""
    chunks = upstream_chunks()
    runs: dict[str, dict[str, list[Rate]]] = {}
    for _ in range(plan.rounds):
        for name, target in h.targets.items():
            for n in plan.streams:
                for direction in ("down", "up"):
                    while True:
                        probe = h.probe(target)
                        window = Window(begin=probe.begin, end=probe.end)
                        if direction == "down":
                            got, secs = await client.downstream(target, n, plan.seconds,
                                                                plan.warmup_s, window)
                        else:
                            got, secs = await client.upstream(
                                target, n, plan.seconds, chunks, window,
                                in_flight=plan.in_flight)
                        cpu = {k: v / secs for k, v in probe.used.items()}
                        if not retries.again(cpu["other"]):
                            break
                    rate = Rate(got / secs / MB, cpu)
                    runs.setdefault(name, {}).setdefault(f"{direction} x{n}", []).append(rate)
    return {name: {case: median_rate(rates) for case, rates in cases.items()}
            for name, cases in runs.items()}


async def measure_latency(h: Harness, plan: Plan, retries: Retries) -> dict[str, RoundTrips]:
    """Round trips per target, `plan.latency_samples` per round, the targets in turn;
    a disturbed round is measured again (and only the new one kept)."""
    out: dict[str, RoundTrips] = {}
    for _ in range(plan.latency_rounds):
        for name, target in h.targets.items():
            while True:
                probe = h.probe(target)
                window = Window(begin=probe.begin, end=probe.end)
                seconds = await client.round_trips(target, plan.latency_samples,
                                                   window=window, settle_s=0.1)
                other = probe.used["other"] / window.seconds
                if not retries.again(other):
                    break
            runs = out.setdefault(name, RoundTrips())
            runs.seconds.extend(seconds)
            runs.proxy_cpu_s += probe.used["proxy"]
            runs.other_share = max(runs.other_share, other)
    return out


async def measure_memory(h: Harness, plan: Plan) -> dict[str, list[Usage]]:
    """Usage of each proxy with no tunnel, then with each step of idle tunnels open."""
    out: dict[str, list[Usage]] = {}
    for name in plan.memory_targets:
        target = h.targets[name]
        assert target.pid is not None
        pid = target.pid
        # first tunnels warm lazily built state up (imports, pools, caches) once
        await client.hold_idle(target, 10, lambda: asyncio.sleep(0.2))
        await asyncio.sleep(1.0)  # let the handlers of those go
        readings = [usage(pid)]

        async def step(i: int, readings: list[Usage] = readings, pid: int = pid,
                       target: client.Target = target) -> None:
            await asyncio.sleep(0.5)
            readings.append(usage(pid))
            if i + 1 < len(plan.idle_steps):
                more = plan.idle_steps[i + 1] - plan.idle_steps[i]
                await client.hold_idle(target, more, lambda: step(i + 1))

        await client.hold_idle(target, plan.idle_steps[0], lambda: step(0))
        out[name] = readings
    return out


async def measure_paced(h: Harness, plan: Plan) -> dict[str, Paced]:
    out: dict[str, Paced] = {}
    for name in plan.paced_targets:
        target = h.targets[name]
        probe = h.probe(target)
        window = Window(begin=probe.begin, end=probe.end)
        got, secs = await client.downstream(target, plan.paced_tunnels, plan.paced_seconds,
                                            warmup_s=plan.paced_warmup_s, window=window,
                                            rate=PACED_RATE, frame_bytes=PACED_FRAME)
        out[name] = Paced(offered_mb_s=plan.paced_tunnels * PACED_RATE / MB,
                          delivered_mb_s=got / secs / MB,
                          cpu={k: v / secs for k, v in probe.used.items()})
        await asyncio.sleep(1.0)
    return out


async def measure_all(h: Harness, plan: Plan) -> Results:
    sessions = [t.tokens for t in h.targets.values() if t.tokens is not None]
    for tokens in sessions:
        await tokens.login()
    try:
        phases: dict[str, float] = {}

        async def timed(name: str, measure: Callable[[Harness, Plan], Awaitable[T]]) -> T:
            started = time.monotonic()
            result = await measure(h, plan)
            phases[name] = round(time.monotonic() - started, 1)
            return result

        again = {"latency": Retries(plan.retry_budget), "throughput": Retries(plan.retry_budget)}
        # memory first, while no proxy has yet held the buffers of a fast transfer
        memory = await timed("memory", measure_memory)
        latency = await timed("latency",
                              lambda h, p: measure_latency(h, p, again["latency"]))
        throughput = await timed("throughput",
                                 lambda h, p: measure_throughput(h, p, again["throughput"]))
        paced = await timed("concurrency", measure_paced)
        return Results(throughput=throughput, latency=latency, memory=memory, paced=paced,
                       numpy_paths=h.numpy_paths, phase_seconds=phases,
                       retried_windows={k: v.used for k, v in again.items()})
    finally:
        for tokens in sessions:
            await tokens.aclose()


def _run_async(coro: Callable[[], Awaitable[T]]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro())  # type: ignore[arg-type]


def run(quick: bool) -> Section:
    started = time.monotonic()
    plan = QUICK if quick else FULL
    # one directory per run: a concurrent run (another engineer's `make bench`) keeps its own
    h = Harness(WORKDIR / f"run-{os.getpid()}-{int(time.time())}")
    waited, busy = wait_for_quiet(plan.quiet_wait_s, sample_s=1.0 if plan.quiet_wait_s else 0.5)
    try:
        h.start()
        results = _run_async(lambda: measure_all(h, plan))
    finally:
        h.stop()
    shutil.rmtree(h.workdir, ignore_errors=True)  # kept, with its logs, when the run failed
    results.quiet = {"waited_s": round(waited, 1), "busy_cores_at_start": round(busy, 2)}
    section = build_section(results, plan)
    section.seconds = round(time.monotonic() - started, 1)
    return section
