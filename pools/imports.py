"""Import of a district's golden image: a whole bootable disk file becomes an image
version on every host that can run it.

1. check the file (pools.image_file.inspect: format, nothing outside itself, not corrupt)
2. convert it to a standalone qcow2 in the broker's image library (progress in %)
3. read its partition table: firmware (BIOS/UEFI) and OS family, and its EFI partition's
   bootloaders: the architecture, unless the admin said
4. hash it (SHA-256): the build's identity; the same file imported again is the same version
5. refuse it when no host runs its architecture or firmware, or has room for it
6. upload to each host; each host reads its copy back and checks the hash

Nothing is recorded for a file refused at 1-5, and a host that fails at 6 holds no
volume of it (pools.libvirt.storage deletes a copy that does not match).
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pools import image_file
from pools.esp import bootloader_arches
from pools.hosts import Host
from pools.hypervisor import (
    HostInfo,
    Hypervisor,
    HypervisorError,
    ImageDisk,
    ImageFiles,
    file_digest,
)
from pools.image_file import ImageRefused
from pools.images import ImageStore
from vdi.domain import Arch, Firmware, ImageTraits, OsFamily

IMAGE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
# the start of an EFI partition read for its bootloaders' names (its folders are near
# the start: they are made when the partition is)
ESP_READ_SECTORS = 16 * 2048  # 16 MiB
# what a stage reports: (stage, percent done); stages: check, convert, digest, upload:<host>
Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class ImportOptions:
    """What the admin says of the file; None: detected from the file."""

    format: str | None = None
    firmware: Firmware | None = None
    os_family: OsFamily | None = None
    arch: Arch | None = None  # None: read off the EFI partition, else x86_64
    virtio: bool = True
    agent: bool = True
    boot_delay_s: int = 0
    secure_boot: bool = False


@dataclass(frozen=True)
class Prepared:
    """A checked and converted image, not yet on any host."""

    image_id: str
    disk: ImageDisk
    source: Path
    source_format: str
    detected: image_file.BootLayout


@dataclass(frozen=True)
class HostCopy:
    host: Host
    files: ImageFiles


def _no_progress(stage: str, percent: float) -> None:
    return None


class ImageImporter:
    def __init__(self, images: ImageStore, library: Path) -> None:
        self.images = images
        self.library = library  # where the converted qcow2 files are kept

    def prepare(self, image_id: str, source: Path, options: ImportOptions,
                progress: Progress = _no_progress) -> Prepared:
        """Steps 1-4: the converted file in the library. Raises ImageRefused with the
        reason (and keeps nothing)."""
        if not IMAGE_ID.match(image_id):
            raise ImageRefused("image name: 1-32 lower-case letters, digits or '-', "
                               "starting with a letter or digit")
        _check_options(options)
        self.library.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(4)  # imports of one image at once never share a file
        copy = self.library / f"{image_id}.{token}.source"
        staged = self.library / f"{image_id}.{token}.importing.qcow2"
        try:
            # the checks and the conversion read a private copy: the file the admin named
            # cannot be swapped between the check and the use
            image_file.private_copy(source, copy, lambda pct: progress("copy", pct))
            progress("check", 0.0)
            checked = image_file.inspect(copy, options.format or image_file.declared_format(
                source, None), label=source.name)
            progress("check", 100.0)
            image_file.convert(copy, checked.format, staged,
                               lambda pct: progress("convert", pct))
            head = image_file.first_sectors(staged)
            layout = image_file.boot_layout(head)
            arch = options.arch or _arch_of(staged, head)
            size = staged.stat().st_size
            digest = file_digest(staged, lambda done: progress("digest", 100.0 * done / size))
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        finally:
            copy.unlink(missing_ok=True)
        traits = ImageTraits(
            firmware=options.firmware or layout.firmware,
            os_family=options.os_family or layout.os_family, arch=arch,
            virtio=options.virtio, agent=options.agent, boot_delay_s=options.boot_delay_s,
            secure_boot=options.secure_boot)
        if traits.secure_boot and traits.firmware is not Firmware.UEFI:
            staged.unlink(missing_ok=True)
            raise ImageRefused("secure boot needs a UEFI image (this one boots through BIOS)")
        kept = self.library / f"{image_id}-{digest[:16]}.qcow2"
        staged.replace(kept)
        return Prepared(image_id=image_id,
                        disk=ImageDisk(path=kept, digest=digest,
                                       disk_bytes=checked.disk_bytes, traits=traits),
                        source=source, source_format=checked.format, detected=layout)

    def admit(self, prepared: Prepared, targets: list[tuple[Host, Hypervisor, HostInfo]],
              by: str) -> tuple[int, list[tuple[Host, Hypervisor, HostInfo]]]:
        """Step 5: the hosts that will get it, and the version it is recorded as. Raises
        ImageRefused (and drops the converted file) when no host can run it or one that
        can has no room for it."""
        try:
            able = hosts_that_run(prepared.disk.traits, targets)
            size = prepared.disk.path.stat().st_size
            for record, _, info in able:
                if info.storage_free_bytes is not None and size > info.storage_free_bytes:
                    raise ImageRefused(
                        f"host {record.name}: the image needs {_gib(size)} and its storage "
                        f"has {_gib(info.storage_free_bytes)} left")
        except ImageRefused:
            if not any(v.digest == prepared.disk.digest
                       for v in self.images.versions(prepared.image_id)):
                prepared.disk.path.unlink(missing_ok=True)
            raise
        version = self.images.record_version(
            prepared.image_id, prepared.disk, str(prepared.source), prepared.source_format,
            by, size)
        return version, able

    def publish(self, prepared: Prepared, version: int,
                able: list[tuple[Host, Hypervisor, HostInfo]],
                progress: Progress = _no_progress) -> Iterator[HostCopy]:
        """Step 6: each host gets its copy (yielded once checked there). Raises
        HypervisorError when an upload fails or a copy does not match."""
        size = prepared.disk.path.stat().st_size
        for record, host, _ in able:
            def sent(done: int, name: str = record.name) -> None:
                progress(f"upload:{name}", 100.0 * done / size)
            _, files = self.images.publish(host, prepared.image_id, prepared.disk,
                                           version, progress=sent)
            yield HostCopy(record, files)


def _arch_of(disk: Path, head: bytes) -> Arch:
    """The architecture the bootloaders on the disk's EFI partition are built for
    (`BOOTAA64.EFI`, `grubaa64.efi`: aarch64); x86_64 when it has no EFI partition (a
    BIOS disk), names no architecture or names both."""
    extent = image_file.esp_extent(head)
    if extent is None:
        return Arch.X86_64
    start, sectors = extent
    found = bootloader_arches(image_file.first_sectors(
        disk, min(sectors, ESP_READ_SECTORS), skip=start))
    return next(iter(found)) if len(found) == 1 else Arch.X86_64


def hosts_that_run(traits: ImageTraits, targets: list[tuple[Host, Hypervisor, HostInfo]]
                   ) -> list[tuple[Host, Hypervisor, HostInfo]]:
    """The hosts that run the image's architecture (and its firmware). Raises
    ImageRefused naming what is missing when there is none."""
    able = [t for t in targets if traits.arch in t[2].arches and (
        traits.firmware is not Firmware.UEFI or traits.arch in t[2].uefi_arches)]
    if able:
        return able
    if not any(traits.arch in t[2].arches for t in targets):
        raise ImageRefused(f"no host runs {traits.arch.value} guests (add a host that does, "
                           "or import the image for an architecture a host runs)")
    raise ImageRefused(f"no host has UEFI firmware for {traits.arch.value} guests (install "
                       "OVMF or AAVMF on a host)")


def host_facts(targets: list[tuple[Host, Hypervisor]]
               ) -> list[tuple[Host, Hypervisor, HostInfo]]:
    """Each host with what it reports; a host that does not answer is left out (it gets
    the image when it is back and the admin imports again)."""
    out = []
    for record, host in targets:
        with contextlib.suppress(HypervisorError):
            out.append((record, host, host.host_info()))
    return out


def _check_options(o: ImportOptions) -> None:
    if o.format is not None and o.format not in image_file.FORMATS:
        raise ImageRefused(f"format must be one of {', '.join(image_file.FORMATS)}")
    if o.boot_delay_s < 0 or o.boot_delay_s > 3600:
        raise ImageRefused("boot delay: 0 to 3600 seconds")
    if not o.agent and o.boot_delay_s == 0:
        raise ImageRefused("an image without the guest agent needs a boot delay (the "
                           "seconds it takes to be usable), or the desktop would be handed "
                           "out before it is up")


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"
