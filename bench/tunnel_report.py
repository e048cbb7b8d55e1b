"""The tunnel benchmark's plan, result types and report (tables, plots, targets)."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.common import Plot, Section, Table, Target, percentile
from bench.tunnel_procs import Usage
from bench.tunnel_results import OPTIMISATIONS

BROKER, WSFY_NUMPY, WSFY_PLAIN, RAW, DIRECT = (
    "broker", "websockify+numpy", "websockify (no numpy)", "raw TCP relay", "direct TCP")
WEBSOCKIFY = (WSFY_NUMPY, WSFY_PLAIN)
MB = 1_000_000
PACED_RATE = 2_000_000  # bytes/s per tunnel: a busy VNC desktop
PACED_FRAME = 64 * 1024  # one FramebufferUpdate every ~33 ms
LATENCY_PERCENTILES = (50, 90, 99, 99.9)


@dataclass(frozen=True)
class Plan:
    rounds: int  # every target measured once per round, round after round
    seconds: float  # per throughput window
    warmup_s: float
    streams: tuple[int, ...]
    in_flight: int  # browser->server: unacknowledged batches (of ~247 KB) per tunnel
    latency_rounds: int  # short rounds, the paths taking turns: disturbances hit all alike
    latency_samples: int  # per target and round
    idle_steps: tuple[int, ...]
    memory_targets: tuple[str, ...]
    paced_tunnels: int
    paced_seconds: float
    paced_warmup_s: float
    paced_targets: tuple[str, ...]
    quiet_wait_s: float  # at most this long for other work on the machine to finish
    retry_budget: int  # per phase: windows measured again when other work disturbed them


FULL = Plan(rounds=5, seconds=1.0, warmup_s=0.2, streams=(1, 10), in_flight=8,
            latency_rounds=20, latency_samples=500, idle_steps=(100, 200),
            memory_targets=(BROKER, *WEBSOCKIFY), paced_tunnels=200, paced_seconds=12.0,
            paced_warmup_s=2.0, paced_targets=(BROKER, WSFY_NUMPY, RAW), quiet_wait_s=60.0,
            retry_budget=20)
QUICK = Plan(rounds=1, seconds=0.5, warmup_s=0.2, streams=(1, 10), in_flight=2,
             latency_rounds=2, latency_samples=300, idle_steps=(25, 50),
             memory_targets=(BROKER, WSFY_NUMPY), paced_tunnels=50, paced_seconds=3.0,
             paced_warmup_s=1.0, paced_targets=(BROKER,), quiet_wait_s=0.0,
             retry_budget=0)


@dataclass(frozen=True)
class Rate:
    mb_s: float
    cpu: dict[str, float]  # cores busy in the window: proxy, backend, client, kernel, other
    low: float = 0.0  # the slowest and fastest of the runs the median came from
    high: float = 0.0

    @property
    def proxy_s_per_gb(self) -> float:
        return self.cpu["proxy"] / (self.mb_s / 1000) if self.mb_s else float("inf")


def median_rate(rates: list[Rate]) -> Rate:
    """The run with the median throughput (its CPU figures with it); `other` is the
    worst of all runs, to show how disturbed the machine was."""
    ordered = sorted(rates, key=lambda r: r.mb_s)
    mid = ordered[len(ordered) // 2]
    return Rate(mid.mb_s, {**mid.cpu, "other": max(r.cpu["other"] for r in rates)},
                low=ordered[0].mb_s, high=ordered[-1].mb_s)


@dataclass(frozen=True)
class Paced:
    offered_mb_s: float
    delivered_mb_s: float
    cpu: dict[str, float]  # as in Rate

    @property
    def share(self) -> float:
        return self.delivered_mb_s / self.offered_mb_s


@dataclass
class RoundTrips:
    seconds: list[float] = field(default_factory=list)
    proxy_cpu_s: float = 0.0  # over all measured round trips
    other_share: float = 0.0  # the most other processes used, in cores, during a window

    @property
    def proxy_cpu_us(self) -> float:
        """Proxy CPU per round trip, microseconds."""
        return self.proxy_cpu_s / len(self.seconds) * 1e6 if self.seconds else 0.0


@dataclass
class Results:
    throughput: dict[str, dict[str, Rate]]  # target -> case -> rate
    latency: dict[str, RoundTrips]
    memory: dict[str, list[Usage]]  # proxy -> usage at 0 and each idle step
    paced: dict[str, Paced]
    numpy_paths: dict[str, str]  # websockify variant -> the numpy it ran with
    phase_seconds: dict[str, float] = field(default_factory=dict)
    quiet: dict[str, float] = field(default_factory=dict)  # the wait for a quiet machine
    retried_windows: dict[str, int] = field(default_factory=dict)


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def _per_100(readings: list[Usage], steps: tuple[int, ...], attr: str) -> float:
    """MiB per 100 tunnels, from the reading with no tunnels to the last step."""
    grown = getattr(readings[-1], attr) - getattr(readings[0], attr)
    return float(grown) / 1024 / steps[-1] * 100


def _other_note(values: list[float]) -> str:
    return (f"Other processes on the machine used up to {100 * max(values):.0f} % of a core "
            "during a window (0 % = undisturbed).")


def _quiet_note(r: Results) -> str:
    if not r.quiet:
        return ""
    return (f" Before the run: waited {r.quiet['waited_s']:g} s for other work to finish; "
            f"other processes then used {r.quiet['busy_cores_at_start']:g} cores. "
            f"Windows measured again because other processes used more than a quarter of a "
            f"core during them: {r.retried_windows}.")


def _throughput(s: Section, r: Results, plan: Plan) -> dict[str, Any]:
    thr = r.throughput
    cases = list(thr[BROKER])
    others = [rate.cpu["other"] for row in thr.values() for rate in row.values()]
    s.tables.append(Table(
        title="Throughput, MB/s (1 MB = 10^6 bytes): median (slowest-fastest run)",
        columns=["path", *cases],
        rows=[[name, *(f"{row[c].mb_s:.0f} ({row[c].low:.0f}-{row[c].high:.0f})"
                       for c in cases)] for name, row in thr.items()],
        note=(f"Median of {plan.rounds} windows of {plan.seconds:g} s, the paths taking turns "
              "(this shared 2-core VM varies by tens of per cent from run to run). "
              "down: FramebufferUpdates (raw 256x256 tiles) from the fake desktop as fast as "
              "it writes; up: the browser mix (a 60 KiB ClientCutText, then 24 PointerEvents, "
              "8 KeyEvent pairs, 4 FramebufferUpdateRequests, repeated) in 64 KiB websocket "
              "messages, timed until the desktop acknowledged the last byte. x10 = ten "
              "tunnels at once, summed. websockify runs took these numpy paths: "
              f"{r.numpy_paths}. " + _other_note(others) + _quiet_note(r))))
    proxies = [name for name in thr if name != DIRECT]
    s.tables.append(Table(
        title="Proxy CPU per GB relayed, core-seconds", columns=["proxy", *cases],
        rows=[[name, *(round(thr[name][c].proxy_s_per_gb, 2) for c in cases)]
              for name in proxies],
        note=("utime+stime of the proxy's process tree (websockify: with its forked "
              "handlers) over the window, per GB delivered: the proxy's own cost, whoever "
              "else limited the throughput.")))
    best_wsfy = {c: max(thr[w][c].mb_s for w in WEBSOCKIFY) for c in cases}
    vs_wsfy = {c: _ratio(thr[BROKER][c].mb_s, best_wsfy[c]) for c in cases}
    vs_raw = {c: _ratio(thr[BROKER][c].mb_s, thr[RAW][c].mb_s) for c in cases}
    s.tables.append(Table(
        title="Broker throughput relative to the others", columns=["broker vs", *cases],
        rows=[["the faster websockify", *(f"{vs_wsfy[c]:.2f}x" for c in cases)],
              ["raw TCP relay", *(f"{100 * vs_raw[c]:.0f} %" for c in cases)]]))
    s.plots.append(Plot(filename="tunnel-throughput.png", title="Tunnel throughput",
                        xlabel="direction x tunnels", ylabel="MB/s",
                        series={name: [(c, round(row[c].mb_s)) for c in cases]
                                for name, row in thr.items()}))
    s.plots.append(Plot(filename="tunnel-cpu-per-gb.png", title="Proxy CPU per GB relayed",
                        xlabel="direction x tunnels", ylabel="core-seconds per GB",
                        series={name: [(c, round(thr[name][c].proxy_s_per_gb, 2))
                                       for c in cases] for name in proxies}))
    ceiling = {c: _ratio(thr[RAW][c].mb_s, best_wsfy[c]) for c in cases}
    for direction, label in (("down", "server->browser"), ("up", "browser->server")):
        worst = min((vs_wsfy[c], c) for c in cases if c.startswith(direction))
        value = f"{worst[0]:.2f}x ({worst[1]}, the worse case)"
        unreachable = sorted(c for c in cases if c.startswith(direction) and ceiling[c] < 1.5)
        if unreachable:  # websockify already runs near the physical limit there
            value += ("; out of reach on this machine: the raw TCP relay itself is only "
                      + ", ".join(f"{ceiling[c]:.2f}x websockify ({c})" for c in unreachable))
        s.targets.append(Target(f"throughput {label} vs websockify", ">= 1.5x (1 and 10 tunnels)",
                                value, worst[0] >= 1.5))
    worst_raw = min((vs_raw[c], c) for c in cases)
    s.targets.append(Target("throughput vs raw TCP relay", ">= 40 % in every case",
                            f"{100 * worst_raw[0]:.0f} % ({worst_raw[1]}, the worst case)",
                            worst_raw[0] >= 0.40))
    return {"throughput_mb_s": {n: {c: round(v.mb_s) for c, v in row.items()}
                                for n, row in thr.items()},
            "proxy_cpu_s_per_gb": {n: {c: round(thr[n][c].proxy_s_per_gb, 3) for c in cases}
                                   for n in proxies},
            "broker_vs_websockify": {c: round(v, 2) for c, v in vs_wsfy.items()},
            "broker_vs_raw": {c: round(v, 2) for c, v in vs_raw.items()},
            "websockify_cpu_per_gb_vs_broker": {
                c: round(min(thr[w][c].proxy_s_per_gb for w in WEBSOCKIFY)
                         / thr[BROKER][c].proxy_s_per_gb, 2) for c in cases}}


def _latency(s: Section, r: Results, plan: Plan) -> dict[str, Any]:
    us = {name: {p: percentile(v.seconds, p) * 1e6 for p in LATENCY_PERCENTILES}
          for name, v in r.latency.items()}
    s.tables.append(Table(
        title="Round trip of an 8-byte KeyEvent echoed by the desktop, microseconds",
        columns=["path", *(f"p{p:g}" for p in LATENCY_PERCENTILES), "mean",
                 "proxy CPU per round trip"],
        rows=[[name, *(round(us[name][p]) for p in LATENCY_PERCENTILES),
               round(statistics.fmean(v.seconds) * 1e6),
               round(v.proxy_cpu_us, 1) if name != DIRECT else "-"]
              for name, v in r.latency.items()],
        note=(f"{plan.latency_rounds} x {plan.latency_samples} sequential round trips per path, "
              "the paths taking turns, each round on a new connection left alone for 0.1 s "
              "first (a broker's connect wakes its pool worker); each round trip sends one "
              "KeyEvent (its own websocket message) and waits for the same 8 bytes to come "
              "back. "
              + _other_note([v.other_share for v in r.latency.values()]))))
    s.plots.append(Plot(filename="tunnel-latency.png", title="KeyEvent round trip",
                        xlabel="percentile", ylabel="microseconds",
                        series={name: [(f"p{p:g}", round(v)) for p, v in pct.items()]
                                for name, pct in us.items()}))
    broker = us[BROKER][99]
    best_wsfy = min(us[w][99] for w in WEBSOCKIFY)
    s.targets.append(Target("p99 KeyEvent round trip", "no worse than websockify",
                            f"{broker:.0f} us vs {best_wsfy:.0f} us (the faster websockify)",
                            broker <= best_wsfy))
    return {"latency_us": {n: {f"p{p:g}": round(v) for p, v in pct.items()}
                           for n, pct in us.items()},
            "proxy_cpu_us_per_round_trip": {n: round(v.proxy_cpu_us, 1)
                                            for n, v in r.latency.items() if n != DIRECT}}


def _memory(s: Section, r: Results, plan: Plan) -> dict[str, Any]:
    steps = (0, *plan.idle_steps)
    per100 = {n: _per_100(u, plan.idle_steps, "rss_kib") for n, u in r.memory.items()}
    pss100 = {n: _per_100(u, plan.idle_steps, "pss_kib") for n, u in r.memory.items()}
    s.tables.append(Table(
        title="Memory of idle tunnels (proxy process tree)",
        columns=["proxy", *(f"RSS MiB, {n} open" for n in steps), "RSS MiB per 100",
                 "PSS MiB per 100", f"processes, {steps[-1]} open"],
        rows=[[n, *(round(x.rss_kib / 1024, 1) for x in u), round(per100[n], 2),
               round(pss100[n], 2), u[-1].processes] for n, u in r.memory.items()],
        note=("Growth of VmRSS summed over the proxy and its children (websockify forks one "
              "process per connection, and pages its children share copy-on-write count once "
              "per process there, as the issue's measure asks); PSS shares them out and is "
              "the fairer cost of a forked handler.")))
    s.plots.append(Plot(filename="tunnel-memory.png", title="Proxy RSS with idle tunnels",
                        xlabel="idle tunnels", ylabel="MiB", kind="line",
                        series={n: [(k, round(x.rss_kib / 1024, 1))
                                    for k, x in zip(steps, u, strict=True)]
                                for n, u in r.memory.items()}))
    wsfy = min(per100[w] for w in WEBSOCKIFY if w in per100)
    s.targets.append(Target("memory per idle tunnel", "<= 1/100 of websockify's (RSS)",
                            f"1/{_ratio(wsfy, per100[BROKER]):.0f}: {per100[BROKER]:.2f} vs "
                            f"{wsfy:.0f} MiB per 100 tunnels", per100[BROKER] * 100 <= wsfy))
    return {"rss_mib_per_100": {n: round(v, 2) for n, v in per100.items()},
            "pss_mib_per_100": {n: round(v, 2) for n, v in pss100.items()}}


def _paced(s: Section, r: Results, plan: Plan) -> dict[str, Any]:
    s.tables.append(Table(
        title=f"{plan.paced_tunnels} tunnels at {PACED_RATE // MB} MB/s each",
        columns=["proxy", "offered MB/s", "delivered MB/s", "delivered %", "proxy CPU %",
                 "load generator CPU %", "fake desktop CPU %"],
        rows=[[n, round(p.offered_mb_s), round(p.delivered_mb_s, 1), round(100 * p.share, 1),
               round(100 * p.cpu["proxy"]), round(100 * p.cpu["client"]),
               round(100 * p.cpu["backend"])] for n, p in r.paced.items()],
        note=(f"Each tunnel gets a {PACED_FRAME // 1024} KiB FramebufferUpdate every "
              f"{1000 * PACED_FRAME / PACED_RATE:.0f} ms for {plan.paced_seconds:g} s after "
              f"{plan.paced_warmup_s:g} s of warm-up; a frame the socket will not take in "
              "time is skipped (a VNC server merges updates it could not send), and "
              "delivered counts what reached the load generator in the window. CPU % is of "
              "one core; the machine has 2. "
              + _other_note([p.cpu["other"] for p in r.paced.values()]))))
    s.plots.append(Plot(filename="tunnel-concurrency.png",
                        title=f"{plan.paced_tunnels} tunnels x {PACED_RATE // MB} MB/s",
                        xlabel="proxy", ylabel="%",
                        series={"delivered %": [(n, round(100 * p.share, 1))
                                                for n, p in r.paced.items()],
                                "proxy CPU, % of a core": [(n, round(100 * p.cpu["proxy"]))
                                                           for n, p in r.paced.items()]}))
    broker = r.paced[BROKER]
    s.targets.append(Target(f"{plan.paced_tunnels} tunnels x 2 MB/s delivered", ">= 95 %",
                            f"{100 * broker.share:.1f} % at {100 * broker.cpu['proxy']:.0f} % "
                            "of a core", broker.share >= 0.95))
    return {"paced": {n: asdict(p) for n, p in r.paced.items()}}


def build_section(r: Results, plan: Plan) -> Section:
    s = Section(name="tunnel", title="Console tunnel: broker vs websockify vs raw TCP",
                summary="")
    figures: dict[str, Any] = {}
    for part in (_throughput, _latency, _memory, _paced):
        figures.update(part(s, r, plan))
    s.tables.append(OPTIMISATIONS)
    s.figures = {**figures, "websockify_numpy": r.numpy_paths, "plan": asdict(plan),
                 "phase_seconds": r.phase_seconds, "quiet_before_start": r.quiet,
                 "retried_windows": r.retried_windows}
    thr = figures["broker_vs_websockify"]
    raw = figures["broker_vs_raw"]
    met = sum(t.met for t in s.targets)
    cpu = figures["websockify_cpu_per_gb_vs_broker"]
    s.summary = (
        f"The broker relays {min(thr.values()):.1f}-{max(thr.values()):.1f}x websockify's "
        f"throughput and {100 * min(raw.values()):.0f}-{100 * max(raw.values()):.0f} % of a "
        f"raw TCP relay's, spending {min(cpu.values()):.1f}-{max(cpu.values()):.1f}x less "
        f"CPU per GB than websockify; p99 KeyEvent round trip "
        f"{figures['latency_us'][BROKER]['p99']} us (websockify "
        f"{min(figures['latency_us'][w]['p99'] for w in WEBSOCKIFY)} us); "
        f"{figures['rss_mib_per_100'][BROKER]:.1f} MiB RSS per 100 idle tunnels; "
        f"{100 * r.paced[BROKER].share:.0f} % of {plan.paced_tunnels} x 2 MB/s delivered. "
        f"{met} of {len(s.targets)} targets met.")
    return s
