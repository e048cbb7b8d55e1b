"""The project's own guest disks (deploy/guest/build-image.sh) for tests and benchmarks:
built if missing, and described as an import would describe them."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pools import image_file
from pools.hypervisor import ImageDisk, file_digest
from vdi.domain import Arch, Firmware, ImageTraits, OsFamily

REPO = Path(__file__).resolve().parent.parent
GUEST_DIR = REPO / "var" / "guest"
BUILDER = REPO / "deploy" / "guest" / "build-image.sh"
DISK_NAMES = {(Firmware.BIOS, Arch.X86_64): "bios.qcow2",
              (Firmware.UEFI, Arch.X86_64): "uefi.qcow2",
              (Firmware.UEFI, Arch.AARCH64): "aarch64.qcow2"}


class GuestBuildFailed(RuntimeError):
    """The builder failed; the message holds its output."""


def build_guest(out: Path = GUEST_DIR, timeout_s: float = 900) -> Path:
    """The built guest image folder (the builder returns at once when it is there)."""
    try:
        done = subprocess.run([str(BUILDER), str(out)], capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GuestBuildFailed(f"{BUILDER}: {e}") from e
    if done.returncode != 0:
        raise GuestBuildFailed(f"{BUILDER} exited {done.returncode}:\n"
                               f"{done.stdout}{done.stderr}")
    return out


def disk_of(path: Path, firmware: Firmware, *, agent: bool = True,
            arch: Arch = Arch.X86_64) -> ImageDisk:
    """A built qcow2 disk as the import describes it (checked the same way)."""
    checked = image_file.inspect(path)
    layout = image_file.boot_layout(image_file.first_sectors(path))
    if layout.firmware is not firmware:
        raise GuestBuildFailed(f"{path} boots through {layout.firmware}, not {firmware}")
    return ImageDisk(path=path, digest=file_digest(path), disk_bytes=checked.disk_bytes,
                     traits=ImageTraits(firmware, OsFamily.LINUX, arch, agent=agent,
                                        boot_delay_s=0 if agent else 5))


def guest_disk(firmware: Firmware = Firmware.BIOS, out: Path = GUEST_DIR,
               arch: Arch = Arch.X86_64) -> ImageDisk:
    """The project's guest disk of `arch` booting through `firmware`, built if missing."""
    return disk_of(build_guest(out) / DISK_NAMES[firmware, arch], firmware, arch=arch)
