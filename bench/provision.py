"""Provisioning a floating pool from a published image: N desktops on one host, linked
clones against full copies, in the same run.

Real parts: libvirtd (`qemu:///system`) with TCG guests (domain type `qemu`), the
project's guest image (`var/guest`, built by deploy/guest/build-image.sh) published with
`LibvirtHost.publish_image` into a storage pool of this section's own (`vdi-bench`), and
`pools.libvirt_host.LibvirtHost.create_desktop`, the call the broker's worker makes per
new desktop. Domains are named `vdib-prov-*`, the image volumes `vdib-prov-image-*`; both
are removed afterwards, also after a failure, and a crashed run's leftovers at the start.

Each run provisions N desktops (1 vCPU, 128 MiB) with at most PER_HOST_PARALLEL
`create_desktop` calls at a time, as the worker does per host, and clocks from the first
call: when every call has returned (every domain defined and running), and when every
guest has printed VDI-READY on its serial console (it boots from the image's kernel and
initrd, mounts its disk - the clone or copy - and reports VDI-DISK-OK first). Per
desktop: the duration of its create_desktop call and the bytes its disk file has
allocated. The runs of a mode never overlap: the desktops of one run are removed before
the next starts.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import Plot, Section, Table, percentile
from pools.hypervisor import DesktopSpec, HypervisorError, ImageFiles

if TYPE_CHECKING:
    from pools.libvirt_host import LibvirtHost  # imports libvirt: only where a host is used

REPO = Path(__file__).resolve().parent.parent
GUEST_DIR = REPO / "var" / "guest"
LIBVIRT_URI = "qemu:///system"
STORAGE_POOL = "vdi-bench"
STORAGE_DIR = Path("/var/lib/libvirt/images/vdi-bench")
PREFIX = "vdib-prov-"  # our domains and volumes; never anything else
IMAGE_ID = f"{PREFIX}image"  # published as vdib-prov-image-v1-<digest>-<file>
IMAGE_VERSION = 1
POOL_ID = "bench-provision"
DOMAIN_TYPE = "qemu"  # TCG: KVM guests do not boot on these machines

# The broker's worker runs at most this many hypervisor calls per host at once
# (pools.jobs.JobRunner / pools.worker.PoolWorker, per_host_parallel).
PER_HOST_PARALLEL = 2
EXTRA_PARALLEL = 4  # measured too when the time budget allows
VCPUS = 1
MEMORY_MIB = 128
QEMU_OVERHEAD_MIB = 128  # a generous bound on a TCG QEMU's own memory beyond guest RAM

FULL_DESKTOPS = 50
QUICK_DESKTOPS = 5
# Wall time the section may spend provisioning and waiting; what is left of the runner's
# limit (FULL_TIMEOUT_S["provision"]) is for removing everything.
FULL_BUDGET_S = 295.0
QUICK_BUDGET_S = 110.0
# VDI-READY is counted up to this many seconds after a run's first call, the same for
# every run so that their counts compare; a run waits for it only as long as its calls
# have not all returned by then. Full: 50 TCG guests booting on 2 cores slow the calls
# so much (about 2 minutes for 50) that two runs leave no time to wait for every guest.
FULL_READY_BOUND_S = 100.0
QUICK_READY_BOUND_S = 40.0
TEARDOWN_PARALLEL = 8  # destroy_desktop calls at a time when removing a run's desktops
POLL_S = 0.2  # how often the serial logs are read (resolution of the VDI-READY times)
LINKED, FULL = "linked", "full"
MODE_TEXT = {LINKED: "linked clones", FULL: "full copies"}


def log(message: str) -> None:
    print(f"provision: {message}", flush=True)


# -- what one run measured ----------------------------------------------------------------


@dataclass
class DesktopRun:
    name: str
    started_s: float  # seconds after the run's start when its create_desktop call began
    created_s: float  # ... when the call returned (domain running)
    allocated_bytes: int  # bytes its disk file has allocated once the guests have booted
    ready_s: float | None = None  # ... when VDI-READY appeared on its serial console
    disk_ok: bool = False  # the guest mounted its disk (VDI-DISK-OK)

    @property
    def create_s(self) -> float:
        return self.created_s - self.started_s


@dataclass
class LoadStats:
    load_1m_before: float = 0.0
    load_1m_max: float = 0.0
    cpu_busy: float = 0.0  # share of all cores busy over the run (0..1)
    other_guests: int = 0  # running domains on the host that are not ours, at the start


@dataclass
class ModeRun:
    mode: str  # LINKED | FULL
    parallel: int
    requested: int
    desktops: list[DesktopRun]
    all_running_s: float  # when the last create_desktop call returned
    ready_bound_s: float  # how long the run waited at most for VDI-READY
    load: LoadStats = field(default_factory=LoadStats)
    qemu_rss_mib: float = 0.0  # resident memory of the run's QEMU processes, all booted
    teardown_s: float = 0.0
    panicked: int = 0
    busy_retries: int = 0  # create_desktop calls repeated: "pool has asynchronous jobs running"
    busy_desktops: int = 0  # desktops whose create_desktop had to be repeated

    @property
    def label(self) -> str:
        return f"{MODE_TEXT[self.mode]}, {self.parallel} at a time"

    @property
    def ready(self) -> list[float]:
        """VDI-READY times within the bound."""
        return sorted(d.ready_s for d in self.desktops
                      if d.ready_s is not None and d.ready_s <= self.ready_bound_s)

    @property
    def all_ready_s(self) -> float | None:
        """When the last guest printed VDI-READY; None unless every one did."""
        ready = self.ready
        return ready[-1] if ready and len(ready) == self.requested else None

    def create_ms(self, p: float) -> float:
        return round(percentile([d.create_s for d in self.desktops], p) * 1000, 1)

    def boot_s(self, p: float) -> float | None:
        """create_desktop returned -> VDI-READY, over the guests that got there."""
        values = [d.ready_s - d.created_s for d in self.desktops
                  if d.ready_s is not None and d.ready_s <= self.ready_bound_s]
        return round(percentile(values, p), 2) if values else None

    @property
    def ready_disk_ok(self) -> int:
        """Guests VDI-READY within the bound that had mounted their disk."""
        return sum(d.disk_ok for d in self.desktops
                   if d.ready_s is not None and d.ready_s <= self.ready_bound_s)

    @property
    def allocated_mean(self) -> float:
        return sum(d.allocated_bytes for d in self.desktops) / max(1, len(self.desktops))

    @property
    def allocated_max(self) -> int:
        return max((d.allocated_bytes for d in self.desktops), default=0)


# -- the host -----------------------------------------------------------------------------


def open_host() -> LibvirtHost:
    from pools.libvirt_host import LibvirtHost

    return LibvirtHost(LIBVIRT_URI, storage_pool=STORAGE_POOL, storage_dir=STORAGE_DIR,
                       domain_type=DOMAIN_TYPE)


def _virsh(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", LIBVIRT_URI, *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def domain_names(running_only: bool = False) -> list[str]:
    listing = _virsh("list", "--name", *([] if running_only else ["--all"]))
    return [n.strip() for n in listing.stdout.splitlines() if n.strip()]


def cleanup_host(host: LibvirtHost) -> tuple[int, int]:
    """Remove every domain named PREFIX* (with its disk and serial log), then every
    volume named PREFIX* in our storage pool (image volumes, half-made copies), and the
    log files libvirt kept for them. Touches nothing else. Returns (domains, volumes)."""
    domains = [n for n in domain_names() if n.startswith(PREFIX)]
    for name in domains:
        host.destroy_desktop(name)
    volumes = 0
    if _virsh("pool-info", STORAGE_POOL).returncode == 0:
        listing = _virsh("vol-list", STORAGE_POOL)
        for line in listing.stdout.splitlines():  # " NAME   PATH" rows under a header
            parts = line.split()
            if parts and parts[0].startswith(PREFIX):
                _virsh("vol-delete", parts[0], "--pool", STORAGE_POOL)
                volumes += 1
    for stale in host.log_dir.glob(f"{PREFIX}*.log"):  # serial logs and libvirt's QEMU logs
        stale.unlink(missing_ok=True)
    return len(domains), volumes


def memory_available_mib() -> float:
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return 0.0


def check_memory(count: int) -> None:
    need = count * (MEMORY_MIB + QEMU_OVERHEAD_MIB)
    have = memory_available_mib()
    if need > 0.8 * have:
        raise RuntimeError(f"{count} guests of {MEMORY_MIB} MiB need up to {need} MiB; only "
                           f"{have:.0f} MiB are available")


def qemu_rss_mib(prefix: str) -> float:
    """Resident memory of the QEMU processes whose guest name starts with `prefix`."""
    total_kib = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            if f"guest={prefix}".encode() not in cmdline:
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total_kib / 1024


def allocated_bytes(path: Path) -> int:
    """What a file takes on disk (its allocated blocks, not its apparent size)."""
    try:
        return path.stat().st_blocks * 512
    except OSError:
        return 0


# -- watching the guests and the machine ---------------------------------------------------


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields), idle


class Watcher:
    """A thread that reads the serial logs of a run's guests every POLL_S (VDI-READY,
    VDI-DISK-OK, a kernel panic) and the machine's load average."""

    def __init__(self, logs: dict[str, Path], start: float) -> None:
        self.logs = logs
        self.start = start
        self.ready: dict[str, float] = {}
        self.disk_ok: set[str] = set()
        self.panicked: set[str] = set()
        self.load_max = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._cpu0 = _cpu_times()
        self.cpu_busy = 0.0
        self._thread = threading.Thread(target=self._loop, name="provision-watch", daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        total1, idle1 = _cpu_times()
        total = total1 - self._cpu0[0]
        self.cpu_busy = 0.0 if total <= 0 else 1 - (idle1 - self._cpu0[1]) / total

    def _loop(self) -> None:
        last_load = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            self.scan(now)
            if now - last_load >= 1.0:
                self.load_max = max(self.load_max, os.getloadavg()[0])
                last_load = now
            self._stop.wait(POLL_S)

    def scan(self, now: float) -> None:
        with self._lock:
            pending = [(n, p) for n, p in self.logs.items()
                       if n not in self.ready and n not in self.panicked]
        for name, path in pending:
            try:
                text = path.read_bytes()
            except OSError:
                continue
            with self._lock:
                if b"VDI-DISK-OK" in text:
                    self.disk_ok.add(name)
                if b"VDI-READY" in text:
                    self.ready[name] = now - self.start
                elif b"Kernel panic" in text:
                    self.panicked.add(name)

    def done(self) -> int:
        with self._lock:
            return len(self.ready) + len(self.panicked)


# -- one run ------------------------------------------------------------------------------


def desktop_names(mode: str, parallel: int, count: int) -> list[str]:
    return [f"{PREFIX}{mode}{parallel}-{i:02d}" for i in range(1, count + 1)]


def provision_run(host: LibvirtHost, image: ImageFiles, mode: str, parallel: int, count: int,
                  ready_bound_s: float, deadline: float) -> ModeRun:
    """Create `count` desktops with `parallel` create_desktop calls at a time, wait for
    their VDI-READY until `ready_bound_s` after the start (or `deadline`, if sooner),
    measure, and remove them again."""
    names = desktop_names(mode, parallel, count)
    for name in names:  # libvirt appends to serial logs: no old VDI-READY may be read
        Path(host.serial_log_path(name)).unlink(missing_ok=True)
    load = LoadStats(load_1m_before=os.getloadavg()[0],
                     other_guests=sum(not n.startswith(PREFIX)
                                      for n in domain_names(running_only=True)))
    specs = [DesktopSpec(name=name, desktop_id=name.removeprefix(PREFIX), pool_id=POOL_ID,
                         vcpus=VCPUS, memory_mib=MEMORY_MIB, image=image,
                         linked_clone=mode == LINKED) for name in names]
    start = time.monotonic()

    retries: dict[str, int] = {}

    def create(spec: DesktopSpec) -> tuple[str, float, float]:
        if time.monotonic() > deadline:
            raise OutOfTime(f"{len(calls)} of {count} {MODE_TEXT[mode]} created in "
                            f"{time.monotonic() - start:.0f} s; the section's time budget "
                            "ran out before the rest")
        began = time.monotonic() - start
        retries[spec.name] = create_retrying(host, spec)
        return spec.name, began, time.monotonic() - start

    calls: dict[str, tuple[float, float]] = {}
    logs = {name: Path(host.serial_log_path(name)) for name in names}
    try:
        with Watcher(logs, start) as watcher:
            executor = ThreadPoolExecutor(parallel, thread_name_prefix=f"create-{mode}")
            try:
                futures: list[Future[tuple[str, float, float]]] = [
                    executor.submit(create, spec) for spec in specs]
                for future in as_completed(futures):
                    name, began, returned = future.result()  # a failed call fails the run
                    calls[name] = (began, returned)
            finally:
                executor.shutdown(wait=True, cancel_futures=True)
            all_running = max(returned for _, returned in calls.values())
            log(f"{MODE_TEXT[mode]} x{parallel}: all {count} running after {all_running:.1f} s")
            bound = min(start + ready_bound_s, deadline)
            while watcher.done() < count and time.monotonic() < bound:
                time.sleep(POLL_S)
            watcher.scan(time.monotonic())
            bound = min(bound, time.monotonic())
            rss = qemu_rss_mib(f"{PREFIX}{mode}{parallel}-")
        load.load_1m_max = max(watcher.load_max, load.load_1m_before)
        load.cpu_busy = watcher.cpu_busy
        desktops = [DesktopRun(name=name, started_s=calls[name][0], created_s=calls[name][1],
                               allocated_bytes=allocated_bytes(STORAGE_DIR / f"{name}.qcow2"),
                               ready_s=watcher.ready.get(name), disk_ok=name in watcher.disk_ok)
                    for name in names]
        result = ModeRun(mode=mode, parallel=parallel, requested=count, desktops=desktops,
                         all_running_s=all_running, ready_bound_s=bound - start, load=load,
                         qemu_rss_mib=rss, panicked=len(watcher.panicked),
                         busy_retries=sum(retries.values()),
                         busy_desktops=sum(1 for n in retries.values() if n))
        log(f"{MODE_TEXT[mode]} x{parallel}: {len(result.ready)}/{count} VDI-READY"
            + (f", all after {result.all_ready_s:.1f} s" if result.all_ready_s else
               f" within {bound - start:.0f} s")
            + f"; create p50 {result.create_ms(50):.0f} ms, p95 {result.create_ms(95):.0f} ms")
    finally:
        teardown = time.monotonic()
        remove(host, names, TEARDOWN_PARALLEL)
        teardown_s = time.monotonic() - teardown
    result.teardown_s = teardown_s
    return result


class OutOfTime(RuntimeError):
    """A run's calls did not all finish within the section's budget."""


BUSY_POOL = "has asynchronous jobs running"  # libvirt refuses a pool refresh during a build
BUSY_RETRIES = 100
BUSY_PAUSE_S = 0.05


def create_retrying(host: LibvirtHost, spec: DesktopSpec) -> int:
    """host.create_desktop(spec), called again (it is idempotent) while libvirt refuses
    because another call is building a volume in the same storage pool; returns how many
    times it was called again. Any other error is raised."""
    for attempt in range(BUSY_RETRIES + 1):
        try:
            host.create_desktop(spec)
            return attempt
        except HypervisorError as e:
            if BUSY_POOL not in str(e) or attempt == BUSY_RETRIES:
                raise
            time.sleep(BUSY_PAUSE_S)
    raise AssertionError("unreachable")


def remove(host: LibvirtHost, names: list[str], parallel: int) -> None:
    """destroy_desktop for each name, `parallel` at a time; the first error is raised
    after all were tried."""
    with ThreadPoolExecutor(parallel, thread_name_prefix="destroy") as executor:
        futures = [executor.submit(host.destroy_desktop, name) for name in names]
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error


def wait_calm(max_s: float, busy_below: float = 0.3) -> None:
    """Until the CPU is mostly idle (the previous run's guests are gone), at most max_s."""
    end = time.monotonic() + max_s
    calm = 0
    while time.monotonic() < end and calm < 2:
        total0, idle0 = _cpu_times()
        time.sleep(1)
        total1, idle1 = _cpu_times()
        busy = 1 - (idle1 - idle0) / max(1, total1 - total0)
        calm = calm + 1 if busy < busy_below else 0


@contextlib.contextmanager
def bench_host() -> Iterator[LibvirtHost]:
    host = open_host()
    try:
        domains, volumes = cleanup_host(host)
        if domains or volumes:
            log(f"removed {domains} domain(s) and {volumes} volume(s) left by an earlier run")
        yield host
    finally:
        try:
            domains, volumes = cleanup_host(host)
            log(f"cleanup: removed {domains} domain(s) and {volumes} volume(s)")
        finally:
            host.close()


# -- the section --------------------------------------------------------------------------


def run(quick: bool) -> Section:
    count = QUICK_DESKTOPS if quick else FULL_DESKTOPS
    budget = QUICK_BUDGET_S if quick else FULL_BUDGET_S
    ready_bound_s = QUICK_READY_BOUND_S if quick else FULL_READY_BOUND_S
    started = time.monotonic()
    end = started + budget
    check_memory(count)
    subprocess.run([str(REPO / "deploy/guest/build-image.sh"), str(GUEST_DIR)], check=True,
                   capture_output=True, timeout=600)
    runs: list[ModeRun] = []
    skipped: list[str] = []
    with bench_host() as host:
        published = time.monotonic()
        image = host.publish_image(IMAGE_ID, IMAGE_VERSION, GUEST_DIR)
        publish_s = time.monotonic() - published
        image_alloc = allocated_bytes(Path(image.disk_path))
        log(f"image published in {publish_s:.1f} s: {image.disk_path}")
        plan = [(LINKED, PER_HOST_PARALLEL), (FULL, PER_HOST_PARALLEL),
                (LINKED, EXTRA_PARALLEL), (FULL, EXTRA_PARALLEL)]
        durations: list[float] = []
        for mode, parallel in plan:
            left = end - time.monotonic()
            if parallel != PER_HOST_PARALLEL and left < max(durations) + 10:
                # optional: only if a run as long as the longest so far still fits
                skipped.append(f"{MODE_TEXT[mode]}, {parallel} at a time")
                continue
            began = time.monotonic()
            if runs:
                wait_calm(15)  # the previous run's guests are gone
            runs.append(provision_run(host, image, mode, parallel, count, ready_bound_s,
                                      deadline=end - 10))
            durations.append(time.monotonic() - began)
    return build_section(runs, quick=quick, image=image, image_allocated=image_alloc,
                         publish_s=publish_s, skipped=skipped,
                         seconds=time.monotonic() - started)


def _kib(n: float) -> float:
    return round(n / 1024, 1)


def _s(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def timeline(r: ModeRun, ready: bool) -> list[tuple[Any, float]]:
    """(seconds after the start, desktops running or VDI-READY by then), from (0, 0)."""
    times = sorted(r.ready if ready else [d.created_s for d in r.desktops])
    return [(0.0, 0.0), *((round(t, 2), float(i)) for i, t in enumerate(times, 1))]


def build_section(runs: list[ModeRun], *, quick: bool, image: ImageFiles,
                  image_allocated: int, publish_s: float, skipped: list[str],
                  seconds: float) -> Section:
    if not runs:
        raise RuntimeError("no provisioning run")
    count = runs[0].requested
    main = {r.mode: r for r in runs if r.parallel == PER_HOST_PARALLEL}
    linked, full = main.get(LINKED), main.get(FULL)

    def ready_cell(r: ModeRun) -> str:
        if r.all_ready_s is not None:
            return f"{r.all_ready_s:.1f}"
        return f"not all: {len(r.ready)}/{r.requested} within {r.ready_bound_s:.0f} s"

    rows: list[list[Any]] = [
        ["desktops provisioned", *(r.requested for r in runs)],
        ["all create_desktop calls returned, all running (s)",
         *(_s(r.all_running_s) for r in runs)],
        ["all guests printed VDI-READY (s)", *(ready_cell(r) for r in runs)],
        ["guests VDI-READY within the bound / of them with their disk mounted",
         *(f"{len(r.ready)} / {r.ready_disk_ok}" for r in runs)],
        ["create_desktop per desktop p50 (ms)", *(r.create_ms(50) for r in runs)],
        ["create_desktop per desktop p95 (ms)", *(r.create_ms(95) for r in runs)],
        ["create_desktop per desktop max (ms)", *(r.create_ms(100) for r in runs)],
        ["create_desktop calls repeated: pool busy (desktops affected)",
         *(f"{r.busy_retries} ({r.busy_desktops})" for r in runs)],
        ["call returned → VDI-READY p50 (s)", *(r.boot_s(50) for r in runs)],
        ["call returned → VDI-READY p95 (s)", *(r.boot_s(95) for r in runs)],
        ["disk allocated per desktop, mean (KiB)", *(_kib(r.allocated_mean) for r in runs)],
        ["disk allocated per desktop, max (KiB)", *(_kib(r.allocated_max) for r in runs)],
        [f"disk allocated for all {count} (MiB)",
         *(round(r.allocated_mean * r.requested / 2**20, 1) for r in runs)],
        ["QEMU resident memory per guest, booted (MiB)",
         *(round(r.qemu_rss_mib / r.requested, 1) for r in runs)],
        ["removing them all (s)", *(_s(r.teardown_s) for r in runs)],
        ["load average (1 min) before → max", *(
            f"{r.load.load_1m_before:.1f} → {r.load.load_1m_max:.1f}" for r in runs)],
        ["CPU busy during the run (both cores)", *(f"{100 * r.load.cpu_busy:.0f} %"
                                                     for r in runs)],
        ["other guests running on the machine", *(r.load.other_guests for r in runs)],
    ]
    common = min(len(r.ready) for r in runs)
    if 0 < common < count:  # not all got there: compare the runs where all of them did
        rows.insert(3, [f"first {common} guests printed VDI-READY (s)",
                        *(round(r.ready[common - 1], 1) for r in runs)])
    incomplete = [r for r in runs if r.all_ready_s is None]
    note = (
        f"Domain type qemu (TCG) on {os.cpu_count() or '?'} cores; {VCPUS} vCPU and "
        f"{MEMORY_MIB} MiB per guest. Times are from a run's first create_desktop call; "
        f"VDI-READY is read from each guest's serial log every {POLL_S:g} s. The image's "
        f"disk is {image.disk_bytes / 2**20:.0f} MiB virtual with "
        f"{_kib(image_allocated):.0f} KiB allocated (an ext4 file system that is mostly "
        "empty), so a full copy here copies little: the copy time and bytes grow with a "
        "real image's size, the linked clone's do not. 'disk allocated' is the clone's or "
        "copy's file (st_blocks) after the guests booted; the linked clones share the "
        "image's blocks besides. Machine load: the load average and CPU share are of the "
        "whole machine during each run, including other work running on it at the same "
        "time ('other guests running' counts domains that were not this section's).")
    if incomplete:
        note += (" Not every guest printed VDI-READY within the bound: "
                 + "; ".join(f"{r.label}: {len(r.ready)} of {r.requested} within "
                             f"{r.ready_bound_s:.0f} s" for r in incomplete)
                 + " (the section's time budget; the rest were still booting under TCG"
                 + (f", {sum(r.panicked for r in incomplete)} kernel panic(s)"
                    if any(r.panicked for r in incomplete) else "") + ").")
    busy = [r for r in runs if r.busy_retries]
    if busy:
        note += (" 'calls repeated': LibvirtHost.create_desktop refreshes the storage pool "
                 "before creating a volume, and libvirt refuses a refresh (\"pool has "
                 "asynchronous jobs running\") while the other concurrent call builds its "
                 f"volume; the section calls it again after {1000 * BUSY_PAUSE_S:.0f} ms (the "
                 "call is idempotent), and the per-desktop times include the repeats.")
    if skipped:
        note += (f" Not measured for lack of time in the section's budget: "
                 f"{', '.join(skipped)}.")
    table = Table(title=f"Provisioning {count} floating desktops on one host",
                  columns=["", *(r.label for r in runs)], rows=rows, note=note)

    times = Plot(
        filename="provision-times.png",
        title=f"{count} desktops from a published image: linked clones vs full copies",
        xlabel="", ylabel="seconds after the first create_desktop call", kind="bar",
        series={r.label: [("all running", round(r.all_running_s, 1)),
                          *([(f"first {common} VDI-READY", round(r.ready[common - 1], 1))]
                            if 0 < common < count else []),
                          *([("all VDI-READY", round(r.all_ready_s, 1))]
                            if r.all_ready_s is not None else [])]
                for r in runs})
    per_desktop = Plot(
        filename="provision-create.png", title="One create_desktop call",
        xlabel="per desktop", ylabel="ms", kind="bar",
        series={r.label: [("p50", r.create_ms(50)), ("p95", r.create_ms(95)),
                          ("max", r.create_ms(100))] for r in runs})
    over_time = Plot(
        filename="provision-timeline.png",
        title=f"Desktops running and VDI-READY ({PER_HOST_PARALLEL} calls at a time)",
        xlabel="seconds after the first create_desktop call", ylabel="desktops", kind="line",
        series={f"{MODE_TEXT[r.mode]}: {what}": timeline(r, ready)
                for r in runs if r.parallel == PER_HOST_PARALLEL
                for what, ready in (("running", False), ("VDI-READY", True))})

    summary = (f"{count} floating desktops provisioned on one host (libvirtd, TCG guests) "
               f"from a published image by `LibvirtHost.create_desktop`, "
               f"{PER_HOST_PARALLEL} calls at a time as the broker's worker does per host, "
               "first as linked clones, then, after removing them, as full copies. ")
    if linked and full:
        summary += comparison(linked, full)
    figures: dict[str, Any] = {}
    for r in runs:
        key = f"{r.mode}_x{r.parallel}"
        figures[f"{key}_all_running_s"] = _s(r.all_running_s)
        figures[f"{key}_all_ready_s"] = _s(r.all_ready_s)
    for r in runs:
        key = f"{r.mode}_x{r.parallel}"
        figures.update({
            f"{key}_ready": len(r.ready), f"{key}_disk_ok": r.ready_disk_ok,
            f"{key}_ready_bound_s": _s(r.ready_bound_s),
            f"{key}_create_p50_ms": r.create_ms(50), f"{key}_create_p95_ms": r.create_ms(95),
            f"{key}_create_max_ms": r.create_ms(100),
            f"{key}_boot_p50_s": r.boot_s(50), f"{key}_boot_p95_s": r.boot_s(95),
            f"{key}_allocated_mean_bytes": round(r.allocated_mean),
            f"{key}_allocated_max_bytes": r.allocated_max,
            f"{key}_qemu_rss_mib": round(r.qemu_rss_mib, 1),
            f"{key}_teardown_s": _s(r.teardown_s),
            f"{key}_load_1m_before": round(r.load.load_1m_before, 2),
            f"{key}_load_1m_max": round(r.load.load_1m_max, 2),
            f"{key}_cpu_busy": round(r.load.cpu_busy, 3),
            f"{key}_other_guests": r.load.other_guests, f"{key}_panicked": r.panicked,
            f"{key}_busy_retries": r.busy_retries, f"{key}_busy_desktops": r.busy_desktops})
    figures.update({"desktops": count, "vcpus": VCPUS, "memory_mib": MEMORY_MIB,
                    "per_host_parallel": PER_HOST_PARALLEL, "domain_type": "qemu (TCG)",
                    "image_virtual_bytes": image.disk_bytes,
                    "image_allocated_bytes": image_allocated,
                    "publish_s": round(publish_s, 2), "skipped": skipped, "quick": quick})
    return Section(name="provision", title="Provisioning a floating pool",
                   summary=summary, tables=[table], plots=[times, per_desktop, over_time],
                   targets=[], figures=figures, seconds=round(seconds, 1))


def _faster(a: float, b: float, a_name: str, b_name: str, what: str) -> str:
    """'<faster> <what> X s (Y %) sooner than <slower>'."""
    if round(a, 1) == round(b, 1):
        return f"{a_name} and {b_name} {what} at the same time ({a:.1f} s)"
    fast, slow = (a, b) if a < b else (b, a)
    fast_name, slow_name = (a_name, b_name) if a < b else (b_name, a_name)
    return (f"{fast_name} {what} {slow - fast:.1f} s sooner than {slow_name} "
            f"({fast:.1f} s vs {slow:.1f} s, {100 * (slow - fast) / slow:.0f} % less)")


def comparison(linked: ModeRun, full: ModeRun) -> str:
    """The summary's verdict: which mode is faster, by how much."""
    n = linked.requested
    parts = [_faster(linked.all_running_s, full.all_running_s, "linked clones",
                     "full copies", f"had all {n} running")]
    lr, fr = linked.all_ready_s, full.all_ready_s
    if lr is not None and fr is not None:
        parts.append(_faster(lr, fr, "linked clones", "full copies",
                             "had every guest at VDI-READY"))
    else:
        bound = min(linked.ready_bound_s, full.ready_bound_s)
        parts.append(f"within {bound:.0f} s, {len(linked.ready)} of {n} linked clones and "
                     f"{len(full.ready)} of {n} full copies printed VDI-READY")
        k = min(len(linked.ready), len(full.ready))
        if k:
            parts.append(_faster(linked.ready[k - 1], full.ready[k - 1], "linked clones",
                                 "full copies", f"had {k} guests at VDI-READY"))
    text = "; ".join(parts) + ". "
    text = text[0].upper() + text[1:]
    text += (f"One create_desktop call took p50 {linked.create_ms(50):.0f} ms / p95 "
             f"{linked.create_ms(95):.0f} ms for a linked clone, p50 "
             f"{full.create_ms(50):.0f} ms / p95 {full.create_ms(95):.0f} ms for a full copy; "
             f"each desktop's disk file allocated {_kib(linked.allocated_mean):.0f} KiB "
             f"(linked) vs {_kib(full.allocated_mean):.0f} KiB (full) on average. "
             f"The 1-minute load average peaked at {linked.load.load_1m_max:.1f} (linked) and "
             f"{full.load.load_1m_max:.1f} (full), the CPU was "
             f"{100 * min(linked.load.cpu_busy, full.load.cpu_busy):.0f} % busy or more: with "
             "the guests booting under TCG, a call's time is mostly waiting for a core.")
    if linked.load.other_guests != full.load.other_guests:
        text += (f" Caution: other work shared the machine unequally ({linked.load.other_guests} "
                 f"other guests were running during the linked run, "
                 f"{full.load.other_guests} during the full one), so the difference between "
                 "the modes is partly the machine's load, not the disk's.")
    return text
