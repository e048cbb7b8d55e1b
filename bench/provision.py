"""Provisioning a floating pool from a published image: N desktops of each mode on one
host, linked clones against full copies, in the same run, the modes taking turns.

Real parts: libvirtd (`qemu:///system`) with TCG guests (domain type `qemu`), the
project's guest image (`var/guest`, built by deploy/guest/build-image.sh) published with
`LibvirtHost.publish_image` into a storage pool of this section's own (`vdi-bench`), and
`pools.libvirt.host.LibvirtHost.create_desktop`, the call the broker's worker makes per
new desktop. Domains are named `vdib-prov-*`, the image volumes `vdib-prov-image-*`; both
are removed afterwards, also after a failure, and a crashed run's leftovers at the start.

Order. A mode's N desktops (1 vCPU, 128 MiB each) are made in two halves of N/2, at most
PER_HOST_PARALLEL `create_desktop` calls at a time, as the worker does per host. The
halves run in two pairs: pair 1 makes N/2 linked clones and then, their guests still
booting, N/2 full copies; its desktops are removed; pair 2 makes N/2 full copies, then
N/2 linked clones. Over the run the order is linked, full, full, linked (ABBA): each mode
has one half on an idle host and one on top of the other mode's N/2 booting guests, and a
drift of the machine over the run (caches warming up, other work) weighs on both modes
alike. A pair makes N desktops one after another, as one N-desktop run of a mode would,
so a call meets the same load. Per mode: its two halves' times added up (each from the
half's first call until its last call returned: every domain defined and running), which
guests printed VDI-READY on their serial console by the end of the pair's observation (the
guest boots from the image's kernel and initrd, mounts its disk - the clone or copy - and
reports VDI-DISK-OK first), per desktop the duration of its create_desktop call and the
bytes its disk file has allocated.

Two images. The guest image as built has ~1 MiB allocated (an ext4 file system that is
mostly empty): a full copy of it costs next to nothing. The "large" case publishes a
second image, the same files with the disk grown by LARGE_DATA_MIB MiB of non-zero bytes
after the file system (written with qemu-io: every cluster allocated, nothing a copy could
skip; the guest mounts its file system as before), and makes fewer desktops from it
(LARGE_DESKTOPS per mode, in the same pairs), for the time and disk budget.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import Plot, Section, Table, percentile
from harness.guest import disk_of, guest_disk
from pools import image_file
from pools.hypervisor import DesktopSpec, HypervisorError, ImageFiles
from vdi.domain import Firmware

if TYPE_CHECKING:
    from pools.libvirt.host import LibvirtHost  # imports libvirt: only where a host is used

REPO = Path(__file__).resolve().parent.parent
LIBVIRT_URI = "qemu:///system"
STORAGE_POOL = "vdi-bench"
STORAGE_DIR = Path("/var/lib/libvirt/images/vdi-bench")
PREFIX = "vdib-prov-"  # our domains and volumes; never anything else
IMAGE_ID = f"{PREFIX}image"  # published as vdib-prov-image-v1-<digest>-<file>
LARGE_IMAGE_ID = f"{PREFIX}image-large"
IMAGE_VERSION = 1
POOL_ID = "bench-provision"
DOMAIN_TYPE = "qemu"  # TCG: KVM guests do not boot on these machines

# The broker's worker runs at most this many hypervisor calls per host at once
# (pools.jobs.runner.JobRunner / pools.worker.PoolWorker, per_host_parallel).
PER_HOST_PARALLEL = 2
VCPUS = 1
MEMORY_MIB = 128
QEMU_OVERHEAD_MIB = 128  # a generous bound on a TCG QEMU's own memory beyond guest RAM

LINKED, FULL = "linked", "full"
MODE_TEXT = {LINKED: "linked clones", FULL: "full copies"}
MAIN, LARGE = "main", "large"  # the cases: the guest image as built, the grown one
# The modes' order in each pair: over the run linked, full, full, linked.
PAIR_ORDERS: tuple[tuple[str, str], ...] = ((LINKED, FULL), (FULL, LINKED))

FULL_DESKTOPS = 50  # per mode: two halves of 25, one in each pair
QUICK_DESKTOPS = 4
LARGE_DESKTOPS = 10  # per mode from the large image: two halves of 5
QUICK_LARGE_DESKTOPS = 4
# Non-zero data added to the large image's disk. Measured on 2 cores (2026-11-25): with
# few guests booting, a create_desktop call copying 512 MiB took p50 1.1-1.2 s against
# 0.3-0.6 s for a linked clone; under the load of booting guests both take 2-6 s. Five
# copies exist at a time (2.5 GiB of disk), and publishing the image takes 2-3 s.
LARGE_DATA_MIB = 512
# Wall time the section may spend provisioning and waiting; what is left of the runner's
# limit (FULL_TIMEOUT_S["provision"]) is for removing everything.
FULL_BUDGET_S = 620.0
QUICK_BUDGET_S = 110.0
# VDI-READY is counted up to this many seconds after a pair's first call, the same for
# every pair of a case so that their counts compare; a pair waits for it only as long as
# its calls have not all returned by then. Full: 50 TCG guests booting on 2 cores slow the
# calls so much (70-80 s for 50) that there is no time to wait for every guest.
FULL_READY_BOUND_S = 85.0
QUICK_READY_BOUND_S = 30.0
FULL_LARGE_READY_BOUND_S = 20.0
QUICK_LARGE_READY_BOUND_S = 20.0
# What a pair costs beyond its bound (its removal, waiting for a calm CPU), and preparing
# and publishing the large image: the large case runs only if it fits what is left.
PAIR_OVERHEAD_S = 12.0
LARGE_PREPARE_S = 10.0
TEARDOWN_PARALLEL = 8  # destroy_desktop calls at a time when removing a half's desktops
POLL_S = 0.2  # how often the serial logs are read (resolution of the VDI-READY times)


def log(message: str) -> None:
    print(f"provision: {message}", flush=True)


# -- what was measured ----------------------------------------------------------------------


@dataclass
class DesktopRun:
    name: str
    started_s: float  # seconds after its half's first call when its create_desktop began
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
    cpu_busy: float = 0.0  # share of all cores busy over the half (0..1)
    other_guests: int = 0  # running domains on the host that are not ours, at the start
    dirty_mib_before: float = 0.0  # page cache not yet written to disk, at the start


@dataclass
class Half:
    """One mode's half in a pair: `requested` desktops, `position` 1 (first in its pair:
    on an idle host) or 2 (right after the other mode's half, whose guests were booting)."""

    mode: str  # LINKED | FULL
    pair: int  # 1, 2
    position: int  # 1, 2
    requested: int
    desktops: list[DesktopRun]  # times from the half's first call
    offset_s: float  # the half's first call, seconds after its pair's first call
    all_running_s: float  # when the half's last create_desktop call returned
    ready_bound_s: float  # VDI-READY counted until then (from the half's first call)
    load: LoadStats = field(default_factory=LoadStats)
    qemu_rss_mib: float = 0.0  # resident memory of its QEMU processes at the pair's end
    teardown_s: float = 0.0
    panicked: int = 0
    busy_retries: int = 0  # create_desktop calls repeated: "pool has asynchronous jobs running"
    busy_desktops: int = 0  # desktops whose create_desktop had to be repeated

    @property
    def ready(self) -> list[float]:
        """VDI-READY times within the bound."""
        return sorted(d.ready_s for d in self.desktops
                      if d.ready_s is not None and d.ready_s <= self.ready_bound_s)

    @property
    def all_ready_s(self) -> float | None:
        """When the half's last guest printed VDI-READY; None unless every one did."""
        ready = self.ready
        return ready[-1] if ready and len(ready) == self.requested else None

    @property
    def ready_disk_ok(self) -> int:
        return sum(d.disk_ok for d in self.desktops
                   if d.ready_s is not None and d.ready_s <= self.ready_bound_s)

    def boots(self) -> list[float]:
        """create_desktop returned -> VDI-READY, over the guests that got there."""
        return [d.ready_s - d.created_s for d in self.desktops
                if d.ready_s is not None and d.ready_s <= self.ready_bound_s]


@dataclass
class ModeRun:
    """A mode's figures in one case: its two halves together."""

    mode: str
    halves: list[Half]
    parallel: int = PER_HOST_PARALLEL

    @property
    def label(self) -> str:
        return f"{MODE_TEXT[self.mode]}, {self.parallel} at a time"

    @property
    def requested(self) -> int:
        return sum(h.requested for h in self.halves)

    @property
    def desktops(self) -> list[DesktopRun]:
        return [d for h in self.halves for d in h.desktops]

    def half(self, position: int) -> Half | None:
        return next((h for h in self.halves if h.position == position), None)

    @property
    def all_running_s(self) -> float:
        """All desktops running: the halves' times added up."""
        return sum(h.all_running_s for h in self.halves)

    @property
    def ready_count(self) -> int:
        return sum(len(h.ready) for h in self.halves)

    @property
    def ready_disk_ok(self) -> int:
        return sum(h.ready_disk_ok for h in self.halves)

    @property
    def ready_bound_s(self) -> float:
        """The shortest time a half's guests were watched for VDI-READY."""
        return min((h.ready_bound_s for h in self.halves), default=0.0)

    def create_ms(self, p: float) -> float:
        return round(percentile([d.create_s for d in self.desktops], p) * 1000, 1)

    def boot_s(self, p: float) -> float | None:
        values = [b for h in self.halves for b in h.boots()]
        return round(percentile(values, p), 2) if values else None

    @property
    def allocated_mean(self) -> float:
        return sum(d.allocated_bytes for d in self.desktops) / max(1, len(self.desktops))

    @property
    def allocated_max(self) -> int:
        return max((d.allocated_bytes for d in self.desktops), default=0)

    @property
    def qemu_rss_mib(self) -> float:
        return sum(h.qemu_rss_mib for h in self.halves)

    @property
    def teardown_s(self) -> float:
        return sum(h.teardown_s for h in self.halves)

    @property
    def panicked(self) -> int:
        return sum(h.panicked for h in self.halves)

    @property
    def busy_retries(self) -> int:
        return sum(h.busy_retries for h in self.halves)

    @property
    def busy_desktops(self) -> int:
        return sum(h.busy_desktops for h in self.halves)

    @property
    def other_guests(self) -> int:
        return max((h.load.other_guests for h in self.halves), default=0)

    @property
    def load_max(self) -> float:
        return max((h.load.load_1m_max for h in self.halves), default=0.0)

    @property
    def cpu_busy_min(self) -> float:
        return min((h.load.cpu_busy for h in self.halves), default=0.0)


@dataclass
class Case:
    """One image's measurements: its linked clones and full copies."""

    key: str  # MAIN | LARGE
    image: ImageFiles
    image_allocated: int
    publish_s: float
    linked: ModeRun
    full: ModeRun
    ready_bound_s: float = 0.0  # VDI-READY watched at most this long after a pair's start
    data_mib: int = 0  # non-zero data added to the image's disk (LARGE)

    @property
    def runs(self) -> list[ModeRun]:
        return [self.linked, self.full]

    @property
    def per_mode(self) -> int:
        return self.linked.requested

    def label(self, r: ModeRun) -> str:
        return r.label if self.key == MAIN else f"{r.label}, {self.data_mib} MiB image"

    def figure_key(self, r: ModeRun) -> str:
        key = f"{r.mode}_x{r.parallel}"
        return key if self.key == MAIN else f"{self.key}_{key}"

    def order_text(self) -> str:
        """The halves in the order they ran, e.g. 'linked, full | full, linked'."""
        halves = sorted((h for r in self.runs for h in r.halves),
                        key=lambda h: (h.pair, h.position))
        pairs: dict[int, list[str]] = {}
        for h in halves:
            pairs.setdefault(h.pair, []).append(MODE_TEXT[h.mode])
        return "; ".join(f"pair {p}: {' then '.join(modes)}" for p, modes in pairs.items())


# -- the host -----------------------------------------------------------------------------


def open_host() -> LibvirtHost:
    from pools.libvirt.host import LibvirtHost

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


def _meminfo_kib(*keys: str) -> int:
    total = 0
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in keys:
                total += int(rest.split()[0])
    return total


def memory_available_mib() -> float:
    return _meminfo_kib("MemAvailable") / 1024


def dirty_mib() -> float:
    """Written data the kernel has not yet put on disk (Dirty + Writeback)."""
    return _meminfo_kib("Dirty", "Writeback") / 1024


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
    """A thread that reads the serial logs of a pair's guests every POLL_S (VDI-READY,
    VDI-DISK-OK, a kernel panic) and the machine's load average."""

    def __init__(self, logs: dict[str, Path], start: float) -> None:
        self.logs = logs
        self.start = start
        self.ready: dict[str, float] = {}
        self.disk_ok: set[str] = set()
        self.panicked: set[str] = set()
        self._load_max = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._cpu0 = _cpu_times()
        self._thread = threading.Thread(target=self._loop, name="provision-watch", daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def take(self) -> tuple[float, float]:
        """(highest 1-minute load average, share of the CPU busy) since the last take
        (or the start); the next take counts from now."""
        load = os.getloadavg()[0]
        total1, idle1 = _cpu_times()
        with self._lock:
            load_max, self._load_max = max(self._load_max, load), load
            total0, idle0 = self._cpu0
            self._cpu0 = (total1, idle1)
        total = total1 - total0
        return load_max, 0.0 if total <= 0 else 1 - (idle1 - idle0) / total

    def _loop(self) -> None:
        last_load = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            self.scan(now)
            if now - last_load >= 1.0:
                load = os.getloadavg()[0]
                with self._lock:
                    self._load_max = max(self._load_max, load)
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


# -- one pair of halves ---------------------------------------------------------------------


def desktop_names(case: str, mode: str, pair: int, count: int) -> list[str]:
    return [f"{PREFIX}{case}-{mode}{pair}-{i:02d}" for i in range(1, count + 1)]


class OutOfTime(RuntimeError):
    """A pair's calls did not all finish within the section's budget."""


def create_half(host: LibvirtHost, image: ImageFiles, mode: str, names: list[str],
                start: float, deadline: float
                ) -> tuple[dict[str, tuple[float, float]], dict[str, int]]:
    """create_desktop for each name, PER_HOST_PARALLEL at a time; returns per name when its
    call began and returned (seconds after `start`) and how often it was repeated."""
    specs = [DesktopSpec(name=name, desktop_id=name.removeprefix(PREFIX), pool_id=POOL_ID,
                         vcpus=VCPUS, memory_mib=MEMORY_MIB, image=image,
                         linked_clone=mode == LINKED) for name in names]
    calls: dict[str, tuple[float, float]] = {}
    retries: dict[str, int] = {}

    def create(spec: DesktopSpec) -> tuple[str, float, float]:
        if time.monotonic() > deadline:
            raise OutOfTime(f"{len(calls)} of {len(names)} {MODE_TEXT[mode]} created in "
                            f"{time.monotonic() - start:.0f} s; the section's time budget "
                            "ran out before the rest")
        began = time.monotonic() - start
        retries[spec.name] = create_retrying(host, spec)
        return spec.name, began, time.monotonic() - start

    executor = ThreadPoolExecutor(PER_HOST_PARALLEL, thread_name_prefix=f"create-{mode}")
    try:
        futures: list[Future[tuple[str, float, float]]] = [
            executor.submit(create, spec) for spec in specs]
        for future in as_completed(futures):
            name, began, returned = future.result()  # a failed call fails the pair
            calls[name] = (began, returned)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    return calls, retries


def provision_pair(host: LibvirtHost, case: str, image: ImageFiles, pair: int,
                   order: tuple[str, str], per_half: int, ready_bound_s: float,
                   deadline: float) -> list[Half]:
    """`per_half` desktops of order[0], then (the first half's guests still booting)
    `per_half` of order[1]; wait for their VDI-READY until `ready_bound_s` after the pair's
    first call (or `deadline`, if sooner), measure, and remove them again: the second
    half's first, then the first half's."""
    names = {mode: desktop_names(case, mode, pair, per_half) for mode in order}
    every = [n for mode in order for n in names[mode]]
    for name in every:  # libvirt appends to serial logs: no old VDI-READY may be read
        Path(host.serial_log_path(name)).unlink(missing_ok=True)
    other = sum(not n.startswith(PREFIX) for n in domain_names(running_only=True))
    logs = {name: Path(host.serial_log_path(name)) for name in every}
    teardown: dict[str, float] = {}
    start = time.monotonic()
    try:
        made: list[tuple[str, float, LoadStats, dict[str, tuple[float, float]],
                         dict[str, int]]] = []
        with Watcher(logs, start) as watcher:
            for position, mode in enumerate(order, 1):
                if made:  # the first half's load: until the second half starts
                    made[-1][2].load_1m_max, made[-1][2].cpu_busy = watcher.take()
                else:
                    watcher.take()
                offset = time.monotonic() - start
                load = LoadStats(load_1m_before=os.getloadavg()[0], other_guests=other,
                                 dirty_mib_before=dirty_mib())
                calls, retries = create_half(host, image, mode, names[mode], start, deadline)
                made.append((mode, offset, load, calls, retries))
                running = max(r for _, r in calls.values()) - offset
                log(f"{case} pair {pair}, {MODE_TEXT[mode]} (half {position}): all "
                    f"{per_half} running after {running:.1f} s")
            bound = min(start + ready_bound_s, deadline)
            while watcher.done() < len(every) and time.monotonic() < bound:
                time.sleep(POLL_S)
            watcher.scan(time.monotonic())
            bound = min(bound, time.monotonic())
            made[-1][2].load_1m_max, made[-1][2].cpu_busy = watcher.take()
            rss = {mode: qemu_rss_mib(f"{PREFIX}{case}-{mode}{pair}-") for mode in order}
        halves: list[Half] = []
        for position, (mode, offset, load, calls, retries) in enumerate(made, 1):
            load.load_1m_max = max(load.load_1m_max, load.load_1m_before)
            desktops = [
                DesktopRun(name=name, started_s=calls[name][0] - offset,
                           created_s=calls[name][1] - offset,
                           allocated_bytes=allocated_bytes(STORAGE_DIR / f"{name}.qcow2"),
                           ready_s=(watcher.ready[name] - offset
                                    if name in watcher.ready else None),
                           disk_ok=name in watcher.disk_ok)
                for name in names[mode]]
            half = Half(mode=mode, pair=pair, position=position, requested=per_half,
                        desktops=desktops, offset_s=offset,
                        all_running_s=max(d.created_s for d in desktops),
                        ready_bound_s=bound - start - offset, load=load,
                        qemu_rss_mib=rss[mode],
                        panicked=sum(n in watcher.panicked for n in names[mode]),
                        busy_retries=sum(retries.values()),
                        busy_desktops=sum(1 for n in retries.values() if n))
            halves.append(half)
            log(f"{case} pair {pair}, {MODE_TEXT[mode]}: {len(half.ready)}/{per_half} "
                f"VDI-READY within {half.ready_bound_s:.0f} s of the half's start; create "
                f"p50 {percentile([d.create_s for d in desktops], 50) * 1000:.0f} ms; disk "
                f"{sum(d.allocated_bytes for d in desktops) / per_half / 2**20:.1f} MiB each")
    finally:
        for mode in reversed(order):  # the second half's desktops first
            began = time.monotonic()
            remove(host, names[mode], TEARDOWN_PARALLEL)
            teardown[mode] = time.monotonic() - began
    for half in halves:
        half.teardown_s = teardown[half.mode]
    return halves


def measure_case(host: LibvirtHost, case: str, image: ImageFiles, per_mode: int,
                 ready_bound_s: float, deadline: float) -> tuple[ModeRun, ModeRun, float]:
    """The pairs of PAIR_ORDERS, each after the machine calmed down from the last;
    returns the modes' figures and how long the longest pair took, its removal included."""
    halves: list[Half] = []
    longest = 0.0
    for pair, order in enumerate(PAIR_ORDERS, 1):
        began = time.monotonic()
        wait_calm(15)  # the previous pair's guests are gone
        # the previous pair's copies are on disk, not still being written back
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(["sync"], check=False, timeout=30)
        log(f"{case} pair {pair}: waited {time.monotonic() - began:.1f} s for an idle CPU "
            f"and the disk's write-back")
        began = time.monotonic()
        halves += provision_pair(host, case, image, pair, order, per_mode // 2,
                                 ready_bound_s, deadline)
        longest = max(longest, time.monotonic() - began)
    linked, full = ([h for h in halves if h.mode == mode] for mode in (LINKED, FULL))
    return ModeRun(LINKED, linked), ModeRun(FULL, full), longest


# -- the large image ----------------------------------------------------------------------


def make_large_source(out: Path, data_mib: int) -> Path:
    """The guest disk copied into `out`, grown by `data_mib` MiB of 0x5a bytes after its
    partitions, which stay as they are (the guest boots and mounts them as before)."""
    disk = out / "disk.qcow2"
    shutil.copyfile(guest_disk().path, disk)
    fs_bytes = image_file.inspect(disk).disk_bytes
    subprocess.run(["qemu-img", "resize", "-q", "-f", "qcow2", str(disk),
                    str(fs_bytes + data_mib * 2**20)], check=True, capture_output=True,
                   timeout=60)
    writes: list[str] = []
    for mib in range(0, data_mib, 64):  # 64 MiB per write: qemu-io buffers a write whole
        writes += ["-c", f"write -q -P 0x5a {fs_bytes + mib * 2**20} "
                         f"{min(64, data_mib - mib)}M"]
    subprocess.run(["qemu-io", "-f", "qcow2", *writes, str(disk)], check=True,
                   capture_output=True, timeout=300)
    return disk


def disk_free_bytes() -> int:
    return min(shutil.disk_usage(STORAGE_DIR).free,
               shutil.disk_usage(tempfile.gettempdir()).free)


def large_disk_need(per_mode: int, data_mib: int) -> int:
    """The source, its upload, the published image and a half's copies, plus 1 GiB."""
    return (3 + per_mode // 2) * data_mib * 2**20 + 2**30


def publish_large(host: LibvirtHost, data_mib: int) -> tuple[ImageFiles, float]:
    """Make and publish the large image; returns it and the seconds publishing took
    (computing its digest, uploading, converting: not making the source)."""
    with tempfile.TemporaryDirectory(prefix=f"{PREFIX}large-") as tmp:
        made = time.monotonic()
        disk = make_large_source(Path(tmp), data_mib)
        log(f"large image source ({data_mib} MiB of data) made in "
            f"{time.monotonic() - made:.1f} s")
        published = time.monotonic()
        image = host.publish_image(LARGE_IMAGE_ID, IMAGE_VERSION,
                                   disk_of(disk, Firmware.BIOS))
        return image, time.monotonic() - published


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
    large_count = QUICK_LARGE_DESKTOPS if quick else LARGE_DESKTOPS
    budget = QUICK_BUDGET_S if quick else FULL_BUDGET_S
    ready_bound_s = QUICK_READY_BOUND_S if quick else FULL_READY_BOUND_S
    large_bound_s = QUICK_LARGE_READY_BOUND_S if quick else FULL_LARGE_READY_BOUND_S
    started = time.monotonic()
    end = started + budget
    check_memory(max(count, large_count))
    guest = guest_disk()
    cases: list[Case] = []
    skipped: list[str] = []
    with bench_host() as host:
        published = time.monotonic()
        image = host.publish_image(IMAGE_ID, IMAGE_VERSION, guest)
        publish_s = time.monotonic() - published
        log(f"image published in {publish_s:.1f} s: {image.disk_path}")
        linked, full, longest = measure_case(host, MAIN, image, count, ready_bound_s,
                                             end - 10)
        cases.append(Case(MAIN, image, allocated_bytes(Path(image.disk_path)), publish_s,
                          linked, full, ready_bound_s=ready_bound_s))
        left = end - time.monotonic()
        # a large pair: at most its bound and removal, and (with the guests booting all
        # the sooner) not much longer than a pair of the main case with as many desktops
        pair_s = large_bound_s + PAIR_OVERHEAD_S
        if large_count <= count:
            pair_s = min(pair_s, longest + 10)
        need_s = LARGE_PREPARE_S + len(PAIR_ORDERS) * pair_s
        free = disk_free_bytes()
        large_text = f"the {LARGE_DATA_MIB} MiB image ({large_count} desktops per mode)"
        if left < need_s:
            skipped.append(f"{large_text}: {left:.0f} s of the budget left, it needs about "
                           f"{need_s:.0f} s")
        elif free < large_disk_need(large_count, LARGE_DATA_MIB):
            skipped.append(f"{large_text}: {free / 2**30:.1f} GiB of disk free, it needs "
                           f"{large_disk_need(large_count, LARGE_DATA_MIB) / 2**30:.1f} GiB")
        else:
            try:
                large, large_publish_s = publish_large(host, LARGE_DATA_MIB)
                log(f"large image published in {large_publish_s:.1f} s: {large.disk_path}")
                linked, full, _ = measure_case(host, LARGE, large, large_count,
                                               large_bound_s, end - 10)
                cases.append(Case(LARGE, large, allocated_bytes(Path(large.disk_path)),
                                  large_publish_s, linked, full, ready_bound_s=large_bound_s,
                                  data_mib=LARGE_DATA_MIB))
            except OutOfTime as e:
                skipped.append(f"{large_text}: {e}")
            except (HypervisorError, subprocess.SubprocessError, OSError) as e:
                # the small image's figures stand; this case's failure is reported with them
                skipped.append(f"{large_text}: failed: {e}")
        for skip in skipped:
            log(f"not measured: {skip}")
    return build_section(cases, quick=quick, skipped=skipped,
                         seconds=time.monotonic() - started)


def _kib(n: float) -> float:
    return round(n / 1024, 1)


def _mib(n: float) -> float:
    return round(n / 2**20, 1)


def _s(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def timeline(h: Half, ready: bool) -> list[tuple[Any, float]]:
    """(seconds after the pair's first call, the half's desktops running or VDI-READY by
    then), from (the half's first call, 0)."""
    times = sorted(h.ready if ready else [d.created_s for d in h.desktops])
    return [(round(h.offset_s, 2), 0.0),
            *((round(h.offset_s + t, 2), float(i)) for i, t in enumerate(times, 1))]


def _ready_cell(h: Half | None) -> str:
    if h is None:
        return "–"
    if h.all_ready_s is not None:
        return f"{h.all_ready_s:.1f}"
    return f"not all: {len(h.ready)}/{h.requested} within {h.ready_bound_s:.0f} s"


def _per_half(r: ModeRun, text: Any) -> str:
    """A value per half, idle-host half first: 'a; b'."""
    return "; ".join(text(h) for h in sorted(r.halves, key=lambda h: h.position))


def case_table(case: Case, main_count: int) -> Table:
    n, runs = case.per_mode, case.runs
    h = n // 2
    big = case.image_allocated >= 64 * 2**20  # sizes in MiB, not KiB

    def running(position: int) -> list[Any]:
        return [_s(half.all_running_s) if (half := r.half(position)) else None for r in runs]

    def size(b: float) -> float:
        return _mib(b) if big else _kib(b)

    unit = "MiB" if big else "KiB"
    rows: list[list[Any]] = [
        ["desktops per mode (two halves)",
         *(f"{r.requested} ({' + '.join(str(x.requested) for x in r.halves)})" for r in runs)],
        ["half on an idle host: all running (s)", *running(1)],
        [f"half right after the other mode's {h}: all running (s)", *running(2)],
        [f"all {n} running: the two halves added up (s)", *(_s(r.all_running_s) for r in runs)],
        ["all VDI-READY after the half's first call: idle-host half; second half (s)",
         *(f"{_ready_cell(r.half(1))}; {_ready_cell(r.half(2))}" for r in runs)],
        ["guests VDI-READY within the bound / of them with their disk mounted",
         *(f"{r.ready_count} of {r.requested} / {r.ready_disk_ok}" for r in runs)],
        ["create_desktop per desktop p50 (ms)", *(r.create_ms(50) for r in runs)],
        ["create_desktop per desktop p95 (ms)", *(r.create_ms(95) for r in runs)],
        ["create_desktop per desktop max (ms)", *(r.create_ms(100) for r in runs)],
        ["create_desktop calls repeated: pool busy (desktops affected)",
         *(f"{r.busy_retries} ({r.busy_desktops})" for r in runs)],
        ["call returned → VDI-READY p50 (s)", *(r.boot_s(50) for r in runs)],
        ["call returned → VDI-READY p95 (s)", *(r.boot_s(95) for r in runs)],
        [f"disk allocated per desktop, mean ({unit})", *(size(r.allocated_mean) for r in runs)],
        [f"disk allocated per desktop, max ({unit})", *(size(r.allocated_max) for r in runs)],
        [f"disk allocated for all {n} (MiB)",
         *(_mib(r.allocated_mean * r.requested) for r in runs)],
        ["QEMU resident memory per guest at the end of the pair (MiB)",
         *(round(r.qemu_rss_mib / r.requested, 1) for r in runs)],
        ["removing them, both halves (s)", *(_s(r.teardown_s) for r in runs)],
        ["load average (1 min) before → max: idle-host half; second half", *(_per_half(
            r, lambda x: f"{x.load.load_1m_before:.1f} → {x.load.load_1m_max:.1f}")
            for r in runs)],
        ["CPU busy (both cores): idle-host half; second half", *(_per_half(
            r, lambda x: f"{100 * x.load.cpu_busy:.0f} %") for r in runs)],
        ["data not yet written to disk at the half's start (MiB): idle-host half; second half",
         *(_per_half(r, lambda x: f"{x.load.dirty_mib_before:.0f}") for r in runs)],
        ["other guests running on the machine", *(r.other_guests for r in runs)],
    ]
    if case.key == MAIN:
        title = f"Provisioning {n} floating desktops on one host"
    else:
        title = (f"Provisioning {n} floating desktops from an image with {case.data_mib} MiB "
                 "allocated")
    return Table(title=title, columns=["", *(case.label(r) for r in runs)], rows=rows,
                 note=case_note(case, main_count))


def case_note(case: Case, main_count: int) -> str:
    n, runs = case.per_mode, case.runs
    h = n // 2
    bound = case.ready_bound_s or max(x.offset_s + x.ready_bound_s
                                      for r in runs for x in r.halves)
    note = (
        f"Order: {case.order_text()} (linked, full, full, linked), each pair's desktops "
        f"removed before the next; each mode made {h} desktops on an idle host and {h} right "
        f"after the other mode's {h}, whose guests were still booting. A mode's 'all {n} "
        "running' adds up its two halves, each timed from its first create_desktop call to "
        "its last returning; the second half ran on top of the other mode's guests, not its "
        "own (the guests boot the same kernel and do the same work either way). "
        "VDI-READY is read from each guest's serial log every "
        f"{POLL_S:g} s until every guest of the pair printed it, or {bound:.0f} s after the "
        "pair's first call at most (or less when the section's time budget ran out). ")
    if case.key == MAIN:
        note += (
            f"The image's disk is {case.image.disk_bytes / 2**20:.0f} MiB virtual with "
            f"{_kib(case.image_allocated):.0f} KiB allocated (an ext4 file system that is "
            "mostly empty), so a full copy here copies little; the large-image table "
            "measures what copying costs. ")
    else:
        note += (
            f"The image is the guest image with its disk grown to "
            f"{case.image.disk_bytes / 2**20:.0f} MiB virtual and {case.data_mib} MiB of "
            f"non-zero bytes written after the file system, {_mib(case.image_allocated):.0f} "
            f"MiB allocated in all (published in {case.publish_s:.1f} s). "
            + (f"Fewer desktops than from the small image ({n} per mode, not {main_count}) "
               "for the time and disk budget, so the two tables' times do not compare with "
               "each other, only the modes within a table. " if n < main_count else ""))
    note += (
        "'disk allocated' is the clone's or copy's file (st_blocks) at the end of the pair; "
        "the linked clones share the image's blocks besides. Machine load: the load "
        "average and CPU share are of the whole machine during each half, including other "
        "work running on it at the same time ('other guests running' counts domains that "
        "were not this section's). Before each pair the section waits for an idle CPU and "
        "flushes the disk (sync); the 1-minute load average decays over minutes, so an "
        "idle-host half can start with a high one left by the pair before.")
    dirty = [(r, x) for r in runs for x in r.halves if x.load.dirty_mib_before >= 64]
    if dirty:
        note += (" Data from earlier copies was still being written to disk when a half "
                 "started (" + "; ".join(
                     f"{MODE_TEXT[r.mode]}, pair {x.pair}: {x.load.dirty_mib_before:.0f} MiB"
                     for r, x in dirty)
                 + "): a full copy's write-back goes on after its call returned and shares "
                 "the disk with what the host does next.")
    incomplete = [r for r in runs if r.ready_count < r.requested]
    if incomplete:
        panics = sum(r.panicked for r in incomplete)
        note += (" Not every guest printed VDI-READY within the bound: "
                 + "; ".join(f"{r.label}: {r.ready_count} of {r.requested}"
                             for r in incomplete)
                 + " (the section's time budget; the rest were still booting under TCG"
                 + (f", {panics} kernel panic(s)" if panics else "") + ").")
    if any(r.busy_retries for r in runs):
        note += (" 'calls repeated': LibvirtHost.create_desktop refreshes the storage pool "
                 "before creating a volume, and libvirt refuses a refresh (\"pool has "
                 "asynchronous jobs running\") while the other concurrent call builds its "
                 f"volume; the section calls it again after {1000 * BUSY_PAUSE_S:.0f} ms (the "
                 "call is idempotent), and the per-desktop times include the repeats.")
    return note


def build_section(cases: list[Case], *, quick: bool, skipped: list[str],
                  seconds: float) -> Section:
    if not cases:
        raise RuntimeError("no provisioning run")
    main = cases[0]
    count = main.per_mode
    tables = [case_table(c, count) for c in cases]
    if skipped:
        tables[-1].note += f" Not measured: {'; '.join(skipped)}."
    labelled = [(c, r) for c in cases for r in c.runs]

    def times_series(c: Case, r: ModeRun) -> list[tuple[Any, float]]:
        points: list[tuple[Any, float]] = []
        for position, what in ((1, "idle-host half"), (2, "second half")):
            half = r.half(position)
            if half is not None:
                points.append((f"{c.key}: {what}" if c.key != MAIN else what,
                               round(half.all_running_s, 1)))
        points.append((f"{c.key}: both halves" if c.key != MAIN else "both halves",
                       round(r.all_running_s, 1)))
        return points

    times = Plot(
        filename="provision-times.png",
        title=f"All running: {count} desktops per mode, in two halves, linked vs full",
        xlabel="", ylabel="seconds from a half's first create_desktop call", kind="bar",
        series={c.label(r): times_series(c, r) for c, r in labelled})
    per_desktop = Plot(
        filename="provision-create.png", title="One create_desktop call",
        xlabel="per desktop", ylabel="ms", kind="bar",
        series={c.label(r): [("p50", r.create_ms(50)), ("p95", r.create_ms(95)),
                             ("max", r.create_ms(100))] for c, r in labelled})
    over_time = Plot(
        filename="provision-timeline.png",
        title=f"Desktops running and VDI-READY in each pair of halves ({count} per mode)",
        xlabel="seconds after the pair's first create_desktop call", ylabel="desktops",
        kind="line",
        series={f"pair {h.pair}, {MODE_TEXT[h.mode]}: {what}": timeline(h, ready)
                for h in sorted((h for r in main.runs for h in r.halves),
                                key=lambda h: (h.pair, h.position))
                for what, ready in (("running", False), ("VDI-READY", True))})

    summary = (f"{count} floating desktops per mode provisioned on one host (libvirtd, TCG "
               "guests) from a published image by `LibvirtHost.create_desktop`, "
               f"{PER_HOST_PARALLEL} calls at a time as the broker's worker does per host, "
               f"as linked clones and as full copies taking turns: each mode in two halves "
               f"of {count // 2}, in the order {main.order_text()}. ")
    verdict = comparison(main.linked, main.full)
    summary += verdict[0].upper() + verdict[1:]
    for c in cases[1:]:
        summary += (f" From the image with {c.data_mib} MiB of allocated data ({c.per_mode} "
                    "desktops per mode, the same order): " + comparison(c.linked, c.full))
    if skipped:
        summary += f" Not measured: {'; '.join(skipped)}."

    figures: dict[str, Any] = {}
    for c, r in labelled:
        figures[f"{c.figure_key(r)}_all_running_s"] = _s(r.all_running_s)
    for c, r in labelled:
        key = c.figure_key(r)
        for position, name in ((1, "idle_half"), (2, "second_half")):
            half = r.half(position)
            if half is None:
                continue
            figures.update({
                f"{key}_{name}_pair": half.pair,
                f"{key}_{name}_running_s": _s(half.all_running_s),
                f"{key}_{name}_all_ready_s": _s(half.all_ready_s),
                f"{key}_{name}_ready": len(half.ready),
                f"{key}_{name}_ready_bound_s": _s(half.ready_bound_s),
                f"{key}_{name}_load_1m_before": round(half.load.load_1m_before, 2),
                f"{key}_{name}_load_1m_max": round(half.load.load_1m_max, 2),
                f"{key}_{name}_cpu_busy": round(half.load.cpu_busy, 3)})
        figures.update({
            f"{key}_desktops": r.requested,
            f"{key}_ready": r.ready_count, f"{key}_disk_ok": r.ready_disk_ok,
            f"{key}_create_p50_ms": r.create_ms(50), f"{key}_create_p95_ms": r.create_ms(95),
            f"{key}_create_max_ms": r.create_ms(100),
            f"{key}_boot_p50_s": r.boot_s(50), f"{key}_boot_p95_s": r.boot_s(95),
            f"{key}_allocated_mean_bytes": round(r.allocated_mean),
            f"{key}_allocated_max_bytes": r.allocated_max,
            f"{key}_qemu_rss_mib": round(r.qemu_rss_mib, 1),
            f"{key}_teardown_s": _s(r.teardown_s),
            f"{key}_other_guests": r.other_guests, f"{key}_panicked": r.panicked,
            f"{key}_busy_retries": r.busy_retries, f"{key}_busy_desktops": r.busy_desktops})
    figures.update({"desktops": count, "vcpus": VCPUS, "memory_mib": MEMORY_MIB,
                    "per_host_parallel": PER_HOST_PARALLEL, "domain_type": "qemu (TCG)",
                    "order": main.order_text(),
                    "image_virtual_bytes": main.image.disk_bytes,
                    "image_allocated_bytes": main.image_allocated,
                    "publish_s": round(main.publish_s, 2), "skipped": skipped, "quick": quick})
    for c in cases[1:]:
        figures.update({f"{c.key}_desktops": c.per_mode, f"{c.key}_data_mib": c.data_mib,
                        f"{c.key}_image_virtual_bytes": c.image.disk_bytes,
                        f"{c.key}_image_allocated_bytes": c.image_allocated,
                        f"{c.key}_publish_s": round(c.publish_s, 2)})
    return Section(name="provision", title="Provisioning a floating pool",
                   summary=summary, tables=tables, plots=[times, per_desktop, over_time],
                   targets=[], figures=figures, seconds=round(seconds, 1))


def _faster(a: float, b: float, a_name: str, b_name: str, what: str) -> str:
    """'<faster> <what> X s (Y %) sooner than <slower>'."""
    if round(a, 1) == round(b, 1):
        return f"{a_name} and {b_name} {what} at the same time ({a:.1f} s)"
    fast, slow = (a, b) if a < b else (b, a)
    fast_name, slow_name = (a_name, b_name) if a < b else (b_name, a_name)
    return (f"{fast_name} {what} {slow - fast:.1f} s sooner than {slow_name} "
            f"({fast:.1f} s vs {slow:.1f} s, {100 * (slow - fast) / slow:.0f} % less)")


def _halves_text(r: ModeRun) -> str:
    return " + ".join(f"{h.all_running_s:.1f}"
                      for h in sorted(r.halves, key=lambda h: h.position))


def _size_text(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


def comparison(linked: ModeRun, full: ModeRun) -> str:
    """A case's verdict: which mode is faster, by how much, and what moves the figures
    besides the mode."""
    n = linked.requested
    parts = [_faster(linked.all_running_s, full.all_running_s, "linked clones",
                     "full copies", f"had all {n} running").removesuffix(")")
             + f"; idle-host half + second half: {_halves_text(linked)} s linked, "
               f"{_halves_text(full)} s full)"]
    if linked.ready_count == n and full.ready_count == n:
        parts.append(f"every guest printed VDI-READY; call returned → VDI-READY p50 "
                     f"{linked.boot_s(50):.1f} s (linked) vs {full.boot_s(50):.1f} s (full)")
    else:
        parts.append(f"within the bound, {linked.ready_count} of {n} linked clones and "
                     f"{full.ready_count} of {n} full copies printed VDI-READY")
    text = "; ".join(parts) + ". "
    text += (f"One create_desktop call took p50 {linked.create_ms(50):.0f} ms / p95 "
             f"{linked.create_ms(95):.0f} ms for a linked clone, p50 "
             f"{full.create_ms(50):.0f} ms / p95 {full.create_ms(95):.0f} ms for a full copy; "
             f"each desktop's disk file allocated {_size_text(linked.allocated_mean)} "
             f"(linked) vs {_size_text(full.allocated_mean)} (full) on average. ")
    spread = [abs(h1.all_running_s - h2.all_running_s) for r in (linked, full)
              if (h1 := r.half(1)) is not None and (h2 := r.half(2)) is not None]
    if spread:
        text += (f"For scale: a mode's two halves differ by up to {max(spread):.1f} s (idle "
                 f"host vs on top of {n // 2} booting guests), the modes by "
                 f"{abs(linked.all_running_s - full.all_running_s):.1f} s. ")
    busy = min(linked.cpu_busy_min, full.cpu_busy_min)
    text += (f"The 1-minute load average peaked at {linked.load_max:.1f} (linked) and "
             f"{full.load_max:.1f} (full), the CPU was {100 * busy:.0f} % busy or more in "
             "every half" + (": the calls compete with the booting TCG guests for the cores."
                             if busy >= 0.9 else "."))
    if linked.other_guests != full.other_guests:
        text += (f" Caution: other work shared the machine unequally ({linked.other_guests} "
                 f"other guests were running during the linked halves, "
                 f"{full.other_guests} during the full ones), so the difference between "
                 "the modes is partly the machine's load, not the disk's.")
    return text
