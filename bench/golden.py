"""Golden images: create to ready, and import throughput.

Create to ready: linked clones of the project's guest disks on the real libvirtd
(`qemu:///system`, TCG, a storage pool of this section's own, `vdib-golden`), x86_64
BIOS, x86_64 UEFI and aarch64 (UEFI, AAVMF; emulated on this x86_64 machine) taking
turns, one desktop at a time: from the create call to the QEMU guest agent answering
(`LibvirtHost.wait_until_up`, the broker's "ready means up").

Import throughput: a 2 GiB raw disk (a partition table, then 0x5a data: no zero runs
qemu-img could skip) imported by the broker's whole path (`ImageImporter.prepare`: a
private copy, check, convert, partition table, SHA-256) against `qemu-img convert` alone on the same
file, taking turns; the ratio of their times.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import Section, Table, percentile
from harness.guest import guest_disk
from pools.hypervisor import DesktopSpec
from pools.images import ImageStore
from pools.imports import ImageImporter, ImportOptions
from vdi.db import make_engine, migrate, session_factory
from vdi.domain import Arch, Firmware

POOL = "vdib-golden"
STORAGE = Path("/var/lib/libvirt/images/vdib-golden")
PREFIX = "vdib-golden-"
ROUNDS, QUICK_ROUNDS = 10, 2
IMPORT_MIB, QUICK_IMPORT_MIB = 2048, 256
IMPORT_TURNS, QUICK_IMPORT_TURNS = 3, 1
BOOT_BOUND_S = 300


def create_to_ready(rounds: int) -> dict[str, list[float]]:
    from pools.libvirt.host import LibvirtHost  # imports libvirt: only here

    host = LibvirtHost("qemu:///system", storage_pool=POOL, storage_dir=STORAGE,
                       domain_type="qemu")
    modes = {"bios": (Firmware.BIOS, Arch.X86_64), "uefi": (Firmware.UEFI, Arch.X86_64),
             "aarch64": (Firmware.UEFI, Arch.AARCH64)}
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    try:
        images = {mode: host.publish_image(f"{PREFIX}{mode}", 1, guest_disk(fw, arch=arch))
                  for mode, (fw, arch) in modes.items()}
        for n in range(rounds):
            for mode, image in images.items():
                name = f"{PREFIX}{mode}-{n}"
                spec = DesktopSpec(name=name, desktop_id=name, pool_id="bench", vcpus=1,
                                   memory_mib=256, image=image, hostname=f"bench-{n}")
                started = time.monotonic()
                try:
                    host.create_desktop(spec)
                    host.wait_until_up(name, image.traits, BOOT_BOUND_S)
                    times[mode].append(time.monotonic() - started)
                finally:
                    host.destroy_desktop(name)
    finally:
        for info in host.list_desktops():
            if info.name.startswith(PREFIX):
                host.destroy_desktop(info.name)
        host.close()
    return times


def make_source(path: Path, mib: int) -> None:
    """A raw disk of `mib` MiB: an MBR partition table, then 0x5a bytes."""
    with path.open("wb") as f:
        f.truncate(mib << 20)
    subprocess.run(["sfdisk", "-q", str(path)], input="label: dos\nstart=2048, type=83\n",
                   text=True, check=True, capture_output=True)
    block = b"\x5a" * (1 << 20)
    with path.open("r+b") as f:
        f.seek(1 << 20)
        for _ in range(mib - 1):
            f.write(block)


def import_turns(mib: int, turns: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"import": [], "qemu-img convert": []}
    with tempfile.TemporaryDirectory(prefix="vdib-import-") as tmp:
        work = Path(tmp)
        source = work / "district.img"
        make_source(source, mib)
        migrate(f"sqlite:///{work / 'db.sqlite3'}")
        engine = make_engine(f"sqlite:///{work / 'db.sqlite3'}")
        importer = ImageImporter(ImageStore(session_factory(engine)), work / "library")
        try:
            for _ in range(turns):
                started = time.monotonic()
                prepared = importer.prepare("bench", source, ImportOptions())
                times["import"].append(time.monotonic() - started)
                prepared.disk.path.unlink()
                out = work / "plain.qcow2"
                started = time.monotonic()
                subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(source),
                                str(out)], check=True)
                times["qemu-img convert"].append(time.monotonic() - started)
                out.unlink()
        finally:
            engine.dispose()
    return times


def run(quick: bool) -> Section:
    scratch = tempfile.gettempdir()
    free = shutil.disk_usage(scratch).free
    mib = QUICK_IMPORT_MIB if quick else IMPORT_MIB
    if free < 3 * (mib << 20) + (1 << 30):
        raise RuntimeError(f"{scratch} has {free >> 20} MiB free; the import needs "
                           f"{3 * mib + 1024} MiB")
    boots = create_to_ready(QUICK_ROUNDS if quick else ROUNDS)
    imports = import_turns(mib, QUICK_IMPORT_TURNS if quick else IMPORT_TURNS)
    rows = [[mode, len(v), round(percentile(v, 50), 2), round(percentile(v, 95), 2),
             round(max(v), 2)] for mode, v in boots.items()]
    med = {k: percentile(v, 50) for k, v in imports.items()}
    ratio = med["import"] / med["qemu-img convert"]
    mib_s = {k: mib / v for k, v in med.items()}
    return Section(
        name="golden", title="Golden images: create to ready, import throughput",
        summary=(f"Linked clone created to guest agent answering, one at a time under TCG: "
                 f"BIOS p50 {percentile(boots['bios'], 50):.1f} s, UEFI p50 "
                 f"{percentile(boots['uefi'], 50):.1f} s, aarch64 (emulated) p50 "
                 f"{percentile(boots['aarch64'], 50):.1f} s. Importing a {mib} MiB raw disk "
                 f"(private copy, check, convert, partition table, SHA-256) takes "
                 f"{ratio:.2f}x the time "
                 f"of qemu-img convert alone ({mib_s['import']:.0f} vs "
                 f"{mib_s['qemu-img convert']:.0f} MiB/s)."),
        tables=[
            Table("Create to ready (s), the three taking turns",
                  ["disk", "desktops", "p50", "p95", "max"], rows,
                  note="aarch64 is emulated instruction by instruction on this x86_64 "
                       "machine (TCG, cortex-a57); x86_64 runs under TCG here too"),
            Table(f"Import of a {mib} MiB raw disk (s), taking turns",
                  ["path", "runs", "median s", "MiB/s"],
                  [[k, len(v), round(med[k], 2), round(mib_s[k])] for k, v in imports.items()]),
        ],
        figures={"create_to_ready_s": boots, "import_s": imports,
                 "import_ratio": round(ratio, 3)})
