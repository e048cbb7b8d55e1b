"""Processes of the tunnel benchmark: start them, wait for their port, read their cost.

Costs come from /proc: VmRSS from /proc/PID/status, Pss from /proc/PID/smaps_rollup and
utime+stime from /proc/PID/stat. A proxy's cost is the sum over its process tree
(websockify forks one handler process per connection; the broker and the relay are one
process each), so RSS of forked children counts pages they share copy-on-write with the
parent once per process - the figure the issue asks for; Pss splits shared pages.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ProcessFailed(RuntimeError):
    """A benchmark process did not start; the message holds the tail of its output."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (read from /proc, without connecting:
    a probe connection would make websockify fork a handler)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp", encoding="ascii") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "0A":
                return True
    return False


@dataclass
class Running:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the process group (websockify's handlers too); SIGKILL after 5 s."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        # forked handlers may outlive the parent for a moment
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def start(name: str, module_args: list[str], *, port: int, logdir: Path,
          env: dict[str, str] | None = None, timeout_s: float = 30.0,
          cwd: Path = REPO) -> Running:
    """Run `python -m <module_args>` from `cwd` (a checkout of the repository) in its own
    process group; return once it listens on `port`. Raises ProcessFailed with its output
    if it dies or times out."""
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", *module_args], cwd=cwd,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **(env or {})})
    running = Running(name, proc, log)
    deadline = time.monotonic() + timeout_s
    while not listening(port):
        if proc.poll() is not None:
            raise ProcessFailed(f"{name} exited with {proc.returncode}:\n"
                                f"{running.output_tail()}")
        if time.monotonic() > deadline:
            running.stop()
            raise ProcessFailed(f"{name} did not listen on port {port} within {timeout_s} s:\n"
                                f"{running.output_tail()}")
        time.sleep(0.05)
    return running


def process_tree(pid: int) -> list[int]:
    """pid and its descendants still alive."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def _status_kib(pid: int, field: str, path: str = "status") -> int:
    try:
        with open(f"/proc/{pid}/{path}", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class Usage:
    processes: int
    rss_kib: int
    pss_kib: int
    cpu_s: float


def usage(pid: int) -> Usage:
    """Memory and CPU time of a process tree, now."""
    pids = process_tree(pid)
    rss = sum(_status_kib(p, "VmRSS") for p in pids)
    pss = sum(_status_kib(p, "Pss", "smaps_rollup") for p in pids)
    return Usage(len(pids), rss, pss, sum(cpu_seconds(p) for p in pids))


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass(frozen=True)
class ProcStat:
    ppid: int
    cpu_s: float


def snapshot() -> dict[int, ProcStat]:
    """Parent and utime+stime of every process now."""
    out: dict[int, ProcStat] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(entry)] = ProcStat(int(fields[1]),
                                   (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return out


def _tree(procs: dict[int, ProcStat], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, stat in procs.items():
        children.setdefault(stat.ppid, []).append(pid)
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(children.get(pid, []))
    return tree


KTHREADD = 2  # the parent of every kernel thread


@dataclass
class CpuProbe:
    """CPU seconds used in a window by the proxy's process tree, the fake desktop, the
    load generator, kernel threads (ksoftirqd carries part of the loopback traffic) and
    every other process ("other": someone else's work, disturbing the figures).

    Counted per process between two snapshots: a process started in the window counts
    from zero, one that ended in the window is lost (its time cannot be read any more)."""

    proxy: int | None
    backend: int
    client: int = field(default_factory=os.getpid)
    start: dict[int, ProcStat] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)

    def begin(self) -> None:
        self.start = snapshot()

    def end(self) -> None:
        now = snapshot()
        proxy = (_tree(self.start, self.proxy) | _tree(now, self.proxy)
                 if self.proxy is not None else set())
        used = {"proxy": 0.0, "backend": 0.0, "client": 0.0, "kernel": 0.0, "other": 0.0}
        for pid, stat in now.items():
            before = self.start.get(pid)
            delta = stat.cpu_s - (before.cpu_s if before is not None else 0.0)
            if pid in proxy:
                used["proxy"] += delta
            elif pid == self.backend:
                used["backend"] += delta
            elif pid == self.client:
                used["client"] += delta
            elif stat.ppid == KTHREADD or pid == KTHREADD:
                used["kernel"] += delta
            else:
                used["other"] += delta
        self.used = used


def wait_for_quiet(max_wait_s: float, busy_cores: float = 0.3,
                   sample_s: float = 1.0) -> tuple[float, float]:
    """Wait (up to `max_wait_s`) until other processes use less than `busy_cores` of CPU
    over a `sample_s` sample: on a shared machine someone else's build or benchmark
    would skew every figure. Returns (seconds waited, cores busy in the last sample)."""
    started = time.monotonic()
    me = os.getpid()
    while True:
        before = snapshot()
        time.sleep(sample_s)
        after = snapshot()
        busy = sum(stat.cpu_s - before[pid].cpu_s for pid, stat in after.items()
                   if pid in before and pid != me) / sample_s
        waited = time.monotonic() - started
        if busy < busy_cores or waited >= max_wait_s:
            return waited, busy
