"""The hypervisor interface: what the broker needs of one libvirt host.

Every method blocks; callers run them in a worker thread with a deadline
(see `pools.calls.HostCalls`). Implementations translate their library's errors into
the exceptions below. Values crossing this boundary are frozen dataclasses.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vdi.domain import ConsoleEndpoint, ConsoleKind


class HypervisorError(Exception):
    """A hypervisor operation failed; the message is safe to show an admin."""


class HostUnavailable(HypervisorError):
    """The host did not answer (down, refusing, or too slow). Says nothing about its desktops."""


class DomainNotFound(HypervisorError):
    """The host answered and has no such domain."""


@dataclass(frozen=True)
class ImageFiles:
    """A published golden image version as paths on one host."""

    disk_path: str
    kernel_path: str
    initrd_path: str
    cmdline: str
    disk_bytes: int


@dataclass(frozen=True)
class DesktopSpec:
    name: str
    desktop_id: str
    pool_id: str
    vcpus: int
    memory_mib: int
    image: ImageFiles
    # linked clone: a qcow2 overlay on the image (instant, shares its blocks);
    # full copy: the image's disk copied whole (independent of the image afterwards)
    linked_clone: bool = True
    # the desktop's own disk must already be there (a dedicated desktop started again):
    # if it is gone, fail instead of giving its owner a blank clone
    disk_must_exist: bool = False
    console: ConsoleKind = ConsoleKind.VNC  # the graphics its domain serves


@dataclass(frozen=True)
class HostInfo:
    """What a host reports of itself: its capacity for placement."""

    hostname: str
    memory_mib: int
    cpus: int


@dataclass(frozen=True)
class DomainInfo:
    name: str
    desktop_id: str
    pool_id: str
    running: bool


IMAGE_FILES = ("vmlinuz", "initrd.img", "disk.qcow2")
# no_timer_check: under TCG on a busy host the kernel's IO-APIC timer check can fail
# and panic the guest ("IO-APIC + timer doesn't work!"); the check proves nothing here.
DEFAULT_CMDLINE = "console=tty0 console=ttyS0 quiet no_timer_check"


def image_cmdline(source_dir: Path) -> str:
    """The kernel command line a built image asks for (its `cmdline` file), else the
    default."""
    path = source_dir / "cmdline"
    if path.is_file():
        text = path.read_text(encoding="utf-8").strip()
        if text:
            return text
    return DEFAULT_CMDLINE


def qcow2_virtual_size(path: Path) -> int:
    """The disk size a qcow2 image gives its guest, read from its header (bytes 24..32,
    big endian). Raises HypervisorError for a file that is not qcow2, OSError if
    unreadable."""
    with path.open("rb") as f:
        header = f.read(32)
    if header[:4] != b"QFI\xfb":
        raise HypervisorError(f"{path} is not a qcow2 image")
    return int.from_bytes(header[24:32], "big")


def image_digest(source_dir: Path) -> str:
    """SHA-256 over a built image's files: its identity, whatever version it is given.
    Raises FileNotFoundError naming a missing file."""
    h = hashlib.sha256()
    h.update(b"cmdline\0" + image_cmdline(source_dir).encode() + b"\0")
    for name in IMAGE_FILES:
        path = source_dir / name
        h.update(name.encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


class Hypervisor(Protocol):
    uri: str

    def publish_image(self, image_id: str, version: int, source_dir: Path) -> ImageFiles:
        """Copy vmlinuz, initrd.img and disk.qcow2 from source_dir into the host's storage.
        Idempotent: the same version with the same content is reused; other content gets
        other volumes (their names carry the content digest)."""
        ...

    def create_desktop(self, spec: DesktopSpec) -> ConsoleEndpoint:
        """Make the linked clone, define and start the domain, return where its console
        listens. Idempotent: whatever step already happened is reused."""
        ...

    def console_endpoint(self, name: str) -> ConsoleEndpoint:
        """Where a running domain's console (VNC or SPICE) listens. Raises
        DomainNotFound."""
        ...

    def set_console_password(self, name: str, password: str, valid_s: int) -> None:
        """Set a fresh VNC password on a running domain, valid for new connections for
        valid_s seconds. Raises DomainNotFound, ValueError for an empty password."""
        ...

    def destroy_desktop(self, name: str, keep_disk: bool = False) -> None:
        """Stop and undefine the domain and delete its disk (unless keep_disk: the disk
        lives on shared storage and the desktop runs on another host now). Idempotent."""
        ...

    def shut_down_desktop(self, name: str, grace_s: float) -> None:
        """Power the domain off: ask the guest (ACPI power button), and force it off if it
        has not stopped after grace_s. The domain and its disk stay. Idempotent (a
        stopped domain is left as it is). Blocks up to grace_s. Raises DomainNotFound."""
        ...

    def suspend_desktop(self, name: str) -> None:
        """Save the running domain's memory to disk and stop it (libvirt's managed
        save): the host's memory is freed; create_desktop resumes it where it was.
        Idempotent. Raises DomainNotFound."""
        ...

    def host_info(self) -> HostInfo:
        """The host's name and capacity. Raises HostUnavailable when it does not answer."""
        ...

    def migrate_desktop(self, name: str, dest_uri: str, dest_listen: str) -> None:
        """Live-migrate a running domain to the host at dest_uri (disks on storage both
        see at the same path), its console listening on dest_listen there. The domain
        is defined on the destination and undefined here. Raises DomainNotFound."""
        ...

    def list_desktops(self) -> list[DomainInfo]:
        """Domains on this host that carry the broker's metadata."""
        ...

    def serial_log_path(self, name: str) -> str:
        """Where the host writes the domain's serial console."""
        ...


def new_vnc_password() -> str:
    """VNC authentication uses at most 8 characters: take 8 random ones (~47 bits)."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(8))
