"""The hypervisor interface: what the broker needs of one libvirt host.

Every method blocks; callers run them in a worker thread with a deadline
(see `pools.calls.HostCalls`). Implementations translate their library's errors into
the exceptions below. Values crossing this boundary are frozen dataclasses.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vdi.domain import Arch, ConsoleEndpoint, ConsoleKind, ImageTraits


class HypervisorError(Exception):
    """A hypervisor operation failed; the message is safe to show an admin."""


class HostUnavailable(HypervisorError):
    """The host did not answer (down, refusing, or too slow). Says nothing about its desktops."""


class DomainNotFound(HypervisorError):
    """The host answered and has no such domain."""


class GuestNotUp(HypervisorError):
    """The domain runs but its guest did not come up in time (its agent never answered)."""


@dataclass(frozen=True)
class ImageDisk:
    """A golden image build ready to publish: one qcow2 file standing alone (no backing
    or data file: checked on import, pools.image_file), its SHA-256, the disk size its
    guest sees and what it declares of itself."""

    path: Path
    digest: str
    disk_bytes: int
    traits: ImageTraits


@dataclass(frozen=True)
class ImageFiles:
    """A published golden image version as one host holds it: its disk volume there."""

    disk_path: str
    disk_bytes: int
    traits: ImageTraits


@dataclass(frozen=True)
class NetworkSpec:
    """A department's network as the broker defines it on each host (isolated: its
    guests reach each other and nothing else; nat: out through the host)."""

    name: str
    subnet: str  # CIDR, e.g. 10.231.1.0/24
    mode: str = "isolated"

    @property
    def libvirt_name(self) -> str:
        return f"vdi-{self.name}"

    @property
    def bridge(self) -> str:
        return f"vdi-{self.name}"


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
    secure_boot: bool = False  # UEFI secure boot (the pool's option)
    # its network card: 'none', 'network:NAME' (a libvirt network), 'bridge:NAME', or
    # 'user' (QEMU user-mode networking: the guest reaches the host's loopback services)
    network: str = "none"
    # the broker's own network named by `network` (defined on the host if missing)
    network_spec: NetworkSpec | None = None
    # its identity, given through a NoCloud seed ("": no seed) and the pool's
    # customisation data for cloud-init / cloudbase-init
    hostname: str = ""
    user_data: str = ""


@dataclass(frozen=True)
class HostInfo:
    """What a host reports of itself: its capacity for placement."""

    hostname: str
    memory_mib: int
    cpus: int
    # the guest architectures it runs, and those it can boot through UEFI firmware
    arches: frozenset[Arch] = frozenset({Arch.X86_64})
    uefi_arches: frozenset[Arch] = frozenset({Arch.X86_64})
    storage_free_bytes: int | None = None  # room left in its storage pool, if known


@dataclass(frozen=True)
class DomainInfo:
    name: str
    desktop_id: str
    pool_id: str
    running: bool


def file_digest(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """SHA-256 of a file, read in chunks (`progress` is told the bytes read so far).
    Raises OSError if unreadable."""
    h = hashlib.sha256()
    done = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done)
    return h.hexdigest()


class Hypervisor(Protocol):
    uri: str

    def publish_image(self, image_id: str, version: int, disk: ImageDisk,
                      progress: Callable[[int], None] | None = None) -> ImageFiles:
        """Upload the image's disk into the host's storage (`progress` is told the bytes
        sent so far), read it back there and check its digest. Idempotent: the same
        version with the same content is reused; other content gets other volumes (their
        names carry the content digest). Raises HypervisorError when the storage has no
        room for it or the copy there does not match."""
        ...

    def wait_until_up(self, name: str, traits: ImageTraits, timeout_s: float) -> None:
        """Block until the running domain's guest is up: its QEMU guest agent answers,
        or for an image without one, `traits.boot_delay_s` after it was started. Raises
        GuestNotUp after timeout_s, DomainNotFound when it is gone or stopped."""
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

    def guest_addresses(self, name: str) -> list[str]:
        """The guest's IPv4 and global IPv6 addresses as its agent tells them (empty
        when it has none, or no agent answers). Raises DomainNotFound."""
        ...

    def sync_guest_clock(self, name: str) -> bool:
        """Set the guest's clock to the host's through its agent (after a suspended
        desktop resumes, its clock stood still). False when no agent answers. Raises
        DomainNotFound."""
        ...

    def screenshot(self, name: str) -> bytes:
        """The running domain's screen now, as PNG (for the helpdesk). Raises
        DomainNotFound (also when it is not running), HypervisorError."""
        ...

    def reset_desktop(self, name: str) -> None:
        """Reset the running domain at once (the reset button: the guest boots again, its
        disk kept). Raises DomainNotFound."""
        ...

    def shut_down_desktop(self, name: str, grace_s: float) -> None:
        """Power the domain off: ask the guest (its agent, else the ACPI power button),
        and force it off if it has not stopped after grace_s. The domain and its disk
        stay. Idempotent (a stopped domain is left as it is). Blocks up to grace_s.
        Raises DomainNotFound."""
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

    def list_domain_names(self) -> list[str]:
        """The names of every domain defined on this host, the broker's or not."""
        ...

    def serial_log_path(self, name: str) -> str:
        """Where the host writes the domain's serial console."""
        ...


def new_vnc_password() -> str:
    """VNC authentication uses at most 8 characters: take 8 random ones (~47 bits)."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(8))
