"""Golden image files as a district brings them: checked, converted and described with
qemu-img, never opened for writing, never followed outside themselves.

A disk image can name other files: a qcow2 backing file or external data file, a vmdk
extent or parent. Converting such an image would read those files into the desktop (a
host's own files, another desktop's disk), and some qemu-img operations write through
them. So the file's own header is read first, by this module, and an image that names
any other file is refused before qemu-img opens it; `qemu-img info` (which opens no
backing file) then confirms it, `qemu-img check` looks for corruption, and `qemu-img
convert` (with the format given, never probed) makes the qcow2 file the hosts get.

`inspect` and `convert` block; the parsers below them are pure.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vdi.domain import Firmware, OsFamily

FORMATS = ("qcow2", "raw", "vmdk", "vhdx")
_EXTENSIONS = {".qcow2": "qcow2", ".qcow": "qcow2", ".img": "raw", ".raw": "raw",
               ".vmdk": "vmdk", ".vhdx": "vhdx"}
QEMU_IMG_TIMEOUT_S = 120  # info, check, dd; a convert has no bound but shows progress
_SECTOR = 512
# GPT partition types (https://uefi.org/specs/UEFI/2.10/05_GUID_Partition_Table_Format.html)
ESP = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
BIOS_BOOT = uuid.UUID("21686148-6449-6e6f-744e-656564454649")
MS_RESERVED = uuid.UUID("e3c9e316-0b5c-4db8-817d-f92df00215ae")
MS_BASIC_DATA = uuid.UUID("ebd0a0a2-b9e5-4433-87c0-68b6b72699c7")
_MBR_GPT_PROTECTIVE, _MBR_EFI, _MBR_NTFS = 0xEE, 0xEF, 0x07


class ImageRefused(ValueError):
    """The file cannot become a golden image; the message says why, for the admin."""


@dataclass(frozen=True)
class Inspection:
    """What a checked source file is."""

    format: str
    disk_bytes: int  # the disk size its guest would see
    file_bytes: int


@dataclass(frozen=True)
class BootLayout:
    """What the partition table says of how the disk boots and what it holds."""

    firmware: Firmware
    os_family: OsFamily


# --- what the file is, from its own bytes (pure) -----------------------------------------


def declared_format(path: Path, given: str | None) -> str | None:
    """The format the admin gave, else the one the file name says (None: not said)."""
    if given is not None:
        if given not in FORMATS:
            raise ImageRefused(f"format {given!r} is not one of {', '.join(FORMATS)}")
        return given
    return _EXTENSIONS.get(path.suffix.lower())


def sniff_format(head: bytes) -> str:
    """The format the first bytes of a file show; 'raw' when they show none. Raises
    ImageRefused for formats that cannot be imported as they are."""
    if head[:4] == b"QFI\xfb":
        return "qcow2"
    if head[:4] == b"KDMV":
        return "vmdk"
    if head[:8] == b"vhdxfile":
        return "vhdx"
    if head.lstrip().startswith(b"# Disk DescriptorFile"):
        raise ImageRefused("this is a vmdk descriptor, which only points at other files: "
                           "export the disk as a single-file vmdk (monolithicSparse or "
                           "streamOptimized)")
    if head[:4] == b"QED\x00":
        raise ImageRefused("QED images are not supported: convert the disk to qcow2")
    if head[:8] == b"conectix":
        raise ImageRefused("VHD images are not supported: convert the disk to vhdx or qcow2")
    return "raw"


def qcow2_problems(header: bytes) -> list[str]:
    """Why a qcow2 header names files outside the image: a backing file, or an external
    data file (incompatible feature bit 2, header extension 0x44415441). Empty: none."""
    problems: list[str] = []
    if len(header) < 72:
        return ["the qcow2 header is cut short"]
    version = int.from_bytes(header[4:8], "big")
    backing_offset = int.from_bytes(header[8:16], "big")
    if backing_offset != 0:
        problems.append("it has a backing file (a qcow2 overlay must be flattened first: "
                        "qemu-img convert it to a standalone image)")
    if version >= 3 and len(header) >= 104:
        incompatible = int.from_bytes(header[72:80], "big")
        if incompatible & (1 << 2):
            problems.append("it keeps its data in an external data file")
        header_length = int.from_bytes(header[100:104], "big")
        offset = header_length
        while offset + 8 <= len(header):
            ext_type = int.from_bytes(header[offset:offset + 4], "big")
            ext_len = int.from_bytes(header[offset + 4:offset + 8], "big")
            if ext_type == 0:
                break
            if ext_type == 0x44415441 and "it keeps its data in an external data file" \
                    not in problems:
                problems.append("it keeps its data in an external data file")
            offset += 8 + ((ext_len + 7) & ~7)
    elif version < 2:
        problems.append(f"qcow2 version {version} is not supported")
    return problems


_EXTENT = re.compile(r'^\s*(RW|RDONLY|NOACCESS)\s+\d+\s+(\w+)(?:\s+"([^"]*)")?', re.M)


def vmdk_problems(descriptor: str) -> list[str]:
    """Why the embedded descriptor of a sparse vmdk names files outside the image: a
    parent (a delta disk), or extents other than the file itself. Empty: none."""
    problems: list[str] = []
    create_type = re.search(r'^\s*createType\s*=\s*"([^"]*)"', descriptor, re.M)
    kind = create_type.group(1) if create_type else ""
    if kind not in ("monolithicSparse", "streamOptimized"):
        problems.append(f"vmdk type {kind or 'unknown'!r} spreads the disk over other files "
                        "(export it as monolithicSparse or streamOptimized)")
    parent = re.search(r'^\s*parentFileNameHint\s*=\s*"([^"]*)"', descriptor, re.M)
    if parent and parent.group(1):
        problems.append("it is a delta disk of a parent file (flatten it first)")
    extents = _EXTENT.findall(descriptor)
    if len(extents) != 1 or extents[0][1] not in ("SPARSE", "STREAMOPTIMIZED"):
        problems.append("its extents name other files")
    return problems


def vmdk_descriptor(head: bytes, read_at: Callable[[int, int], bytes]) -> str:
    """The descriptor text embedded in a sparse vmdk (header fields descriptorOffset and
    descriptorSize, in sectors, little endian at bytes 28 and 36)."""
    offset = int.from_bytes(head[28:36], "little")
    size = int.from_bytes(head[36:44], "little")
    if offset == 0 or size == 0 or size > 2048:
        return ""
    return read_at(offset * _SECTOR, size * _SECTOR).split(b"\0", 1)[0].decode(
        "utf-8", "replace")


def boot_layout(first_sectors: bytes) -> BootLayout:
    """Firmware and OS family from a disk's first 34 sectors: a GPT disk with an EFI
    system partition (or none for BIOS) boots through UEFI, a GPT disk with only a BIOS
    boot partition and an MBR disk through BIOS (UEFI if it has an EFI partition);
    Microsoft partitions say Windows. Raises ImageRefused for a disk with no partition
    table (not a bootable disk: a filesystem image, or not a disk at all)."""
    if len(first_sectors) < _SECTOR or first_sectors[510:512] != b"\x55\xaa":
        raise ImageRefused("the disk has no partition table: it is not a bootable whole "
                           "disk (a filesystem image, or not a disk image at all)")
    mbr_types = [first_sectors[446 + 16 * i + 4] for i in range(4)]
    if _MBR_GPT_PROTECTIVE in mbr_types:
        types = _gpt_types(first_sectors)
        if types is None:
            raise ImageRefused("the disk's GPT partition table is damaged")
        windows = bool(types & {MS_RESERVED, MS_BASIC_DATA})
        family = OsFamily.WINDOWS if windows else OsFamily.LINUX
        if BIOS_BOOT in types and ESP not in types:
            return BootLayout(Firmware.BIOS, family)
        return BootLayout(Firmware.UEFI, family)
    family = OsFamily.WINDOWS if _MBR_NTFS in mbr_types else OsFamily.LINUX
    firmware = Firmware.UEFI if _MBR_EFI in mbr_types else Firmware.BIOS
    return BootLayout(firmware, family)


def esp_extent(first_sectors: bytes) -> tuple[int, int] | None:
    """(first sector, sectors) of the disk's EFI system partition, from its GPT or MBR;
    None when it has none (or the table cannot be read)."""
    if len(first_sectors) < _SECTOR or first_sectors[510:512] != b"\x55\xaa":
        return None
    for i in range(4):
        entry = first_sectors[446 + 16 * i:446 + 16 * (i + 1)]
        if entry[4] == _MBR_EFI:
            start, size = (int.from_bytes(entry[8:12], "little"),
                           int.from_bytes(entry[12:16], "little"))
            return (start, size) if start and size else None
        if entry[4] == _MBR_GPT_PROTECTIVE:
            for type_, first, last in _gpt_entries(first_sectors) or []:
                if type_ == ESP and 0 < first <= last:
                    return first, last - first + 1
    return None


def _gpt_types(first_sectors: bytes) -> set[uuid.UUID] | None:
    entries = _gpt_entries(first_sectors)
    return None if entries is None else {t for t, _, _ in entries}


def _gpt_entries(first_sectors: bytes) -> list[tuple[uuid.UUID, int, int]] | None:
    """(type, first sector, last sector) of each used GPT entry; None: no GPT."""
    header = first_sectors[_SECTOR:2 * _SECTOR]
    if header[:8] != b"EFI PART":
        return None
    entries_lba = int.from_bytes(header[72:80], "little")
    count = int.from_bytes(header[80:84], "little")
    size = int.from_bytes(header[84:88], "little")
    if size < 128 or entries_lba < 2:
        return None
    found: list[tuple[uuid.UUID, int, int]] = []
    start = entries_lba * _SECTOR
    for i in range(count):
        entry = first_sectors[start + i * size:start + i * size + 48]
        if len(entry) < 48:
            break  # beyond what was read: the usual 128 entries fit in sectors 2..33
        if entry[:16] != bytes(16):
            found.append((uuid.UUID(bytes_le=entry[:16]), int.from_bytes(entry[32:40], "little"),
                          int.from_bytes(entry[40:48], "little")))
    return found


# --- qemu-img (blocks) --------------------------------------------------------------------


def inspect(path: Path, fmt: str | None = None, label: str | None = None) -> Inspection:
    """Check a source file: readable, of the format given (or its name says) and shows,
    naming no other file, and not corrupt (`qemu-img check`). Raises ImageRefused, naming
    the file `label` (default: its own name)."""
    label = label or path.name
    try:
        file_bytes = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(64 * 1024)
    except OSError as e:
        raise ImageRefused(f"cannot read {path}: {e.strerror or e}") from e
    if not path.is_file():
        raise ImageRefused(f"{path} is not a regular file")
    if file_bytes == 0:
        raise ImageRefused(f"{path} is empty")
    shown = sniff_format(head)
    wanted = declared_format(path, fmt) or shown
    if wanted != shown:
        raise ImageRefused(f"{label} is not a {wanted} image (its content is {shown})")
    problems = _own_header_problems(path, shown, head)
    if problems:
        raise ImageRefused(f"{label}: " + "; ".join(problems))
    info = _info(path, shown, label)
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise ImageRefused(f"{label}: it has a backing file")
    specific = info.get("format-specific", {}).get("data", {})
    if specific.get("data-file"):
        raise ImageRefused(f"{label}: it keeps its data in an external data file")
    for extent in specific.get("extents", []):
        if Path(str(extent.get("filename", ""))).resolve() != path.resolve():
            raise ImageRefused(f"{label}: its extents name other files")
    _check(path, shown, label)
    disk_bytes = int(info.get("virtual-size", 0))
    if disk_bytes <= 0:
        raise ImageRefused(f"{label}: the disk has no size")
    return Inspection(format=shown, disk_bytes=disk_bytes, file_bytes=file_bytes)


def _own_header_problems(path: Path, fmt: str, head: bytes) -> list[str]:
    if fmt == "qcow2":
        return qcow2_problems(head)
    if fmt == "vmdk":
        def read_at(offset: int, size: int) -> bytes:
            with path.open("rb") as f:
                f.seek(offset)
                return f.read(size)
        problems = vmdk_problems(vmdk_descriptor(head, read_at))
        if int.from_bytes(head[12:20], "little") == 0:
            # qemu then reads a text descriptor from the file instead of the header's
            problems.append("its header gives no capacity (a descriptor in disguise)")
        if re.search(rb"parentFileNameHint|FLAT|VMFS", read_at(512, 1 << 20)):
            problems.append("it names other files (a parent or flat extents)")
        return problems
    return []


def _qemu_img(args: list[str], what: str,
              timeout_s: float = QEMU_IMG_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["qemu-img", *args], capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except FileNotFoundError as e:
        raise ImageRefused("qemu-img is not installed (Debian package qemu-utils)") from e
    except subprocess.TimeoutExpired as e:
        raise ImageRefused(f"qemu-img {what} took longer than {timeout_s:.0f} s") from e


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("qemu-img: ") if lines else "no reason given"


def _info(path: Path, fmt: str, label: str) -> dict[str, Any]:
    # -U: read without taking the image's lock (it is only read); info opens no backing file
    done = _qemu_img(["info", "--output=json", "-U", "-f", fmt, str(path)], "info")
    if done.returncode != 0:
        raise ImageRefused(f"{label} is not a readable {fmt} image: "
                           f"{_last_line(done.stderr)}")
    try:
        info = json.loads(done.stdout)
    except json.JSONDecodeError as e:
        raise ImageRefused(f"qemu-img info gave no answer for {label}") from e
    if not isinstance(info, dict):
        raise ImageRefused(f"qemu-img info gave no answer for {label}")
    return info


def _check(path: Path, fmt: str, label: str) -> None:
    if fmt == "raw":
        return  # raw has no structure to check
    done = _qemu_img(["check", "-U", "-f", fmt, "--output=json", str(path)], "check",
                     timeout_s=600)
    # 0: clean; 3: leaked clusters only (space lost, no data harmed); 63: not supported
    if done.returncode in (0, 3, 63):
        return
    try:
        found = json.loads(done.stdout)
        reason = (f"{found.get('corruptions', 0)} corruptions, "
                  f"{found.get('check-errors', 0)} check errors")
    except (json.JSONDecodeError, AttributeError):
        reason = _last_line(done.stderr)
    raise ImageRefused(f"{label} is damaged or cut short (qemu-img check: {reason})")


_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


def convert(source: Path, fmt: str, dest: Path,
            progress: Callable[[float], None] | None = None) -> None:
    """Write `source` (of format `fmt`, already inspected) as a standalone qcow2 file at
    `dest` (replaced if there); `progress` is told the percentage done. Raises
    ImageRefused when qemu-img fails. No partial `dest` is left, whatever happens (an
    error in `progress`, an interrupt): qemu-img is stopped and its output removed."""
    part = dest.with_name(dest.name + ".part")
    part.unlink(missing_ok=True)
    cmd = ["qemu-img", "convert", "-p", "-f", fmt, "-O", "qcow2", "-o", "compat=1.1",
           str(source), str(part)]
    with tempfile.TemporaryFile() as errors:  # never a pipe nobody reads
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors)
        except FileNotFoundError as e:
            raise ImageRefused("qemu-img is not installed (Debian package qemu-utils)") from e
        assert proc.stdout is not None
        try:
            buffer = b""
            while chunk := os.read(proc.stdout.fileno(), 256):  # progress ends in '\r'
                buffer += chunk
                *done, buffer = re.split(rb"[\r\n]", buffer)
                for line in done:
                    m = _PROGRESS.search(line)
                    if m and progress is not None:
                        progress(float(m.group(1)))
            failed = proc.wait() != 0
        except BaseException:
            proc.kill()
            proc.wait()
            part.unlink(missing_ok=True)
            raise
        finally:
            proc.stdout.close()
        if failed:
            part.unlink(missing_ok=True)
            errors.seek(0)
            err = errors.read().decode("utf-8", "replace")
            raise ImageRefused(f"{source.name} could not be converted: {_last_line(err)}")
    part.replace(dest)


def private_copy(source: Path, dest: Path, progress: Callable[[float], None] | None = None
                 ) -> None:
    """Copy a regular file into `dest` (a folder only the broker writes), opened once
    without following a symbolic link and without blocking on a FIFO: every check and
    the conversion then read this copy, which nobody can swap or change between the
    check and the use. Raises ImageRefused for anything but a regular file."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(source, flags)
    except OSError as e:
        raise ImageRefused(f"cannot read {source}: {e.strerror or e}") from e
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ImageRefused(f"{source} is not a regular file")
        size, done = st.st_size, 0
        try:
            with dest.open("wb") as out:
                while chunk := f.read(4 << 20):
                    out.write(chunk)
                    done += len(chunk)
                    if progress is not None and size:
                        progress(100.0 * done / size)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise


def first_sectors(qcow2: Path, count: int = 34, skip: int = 0) -> bytes:
    """`count` sectors from sector `skip` of the disk a qcow2 file holds (by default its
    first ones: the partition tables)."""
    out = qcow2.with_name(qcow2.name + ".head")
    try:
        done = _qemu_img(["dd", "-f", "qcow2", "-O", "raw", f"bs={_SECTOR}", f"skip={skip}",
                          f"count={count}", f"if={qcow2}", f"of={out}"], "dd")
        if done.returncode != 0:
            raise ImageRefused(f"cannot read the start of {qcow2.name}: "
                               f"{_last_line(done.stderr)}")
        return out.read_bytes()
    finally:
        out.unlink(missing_ok=True)
