"""An in-memory `Hypervisor` for fast unit tests (worker, assignment, web).

It keeps the real adapter's contract, checked by tests/pools/test_hypervisor_contract.py
which runs the same cases against this fake and against a real libvirtd: idempotent
publish/create/destroy, VNC ports from 5900 on 127.0.0.1, DomainNotFound for unknown
names, ValueError for a password VNC cannot carry. It never imports libvirt.

Switches for tests:
* `down = True`: every call raises HostUnavailable (a host that does not answer);
* `create_error = HypervisorError(...)`: create_desktop raises it and creates nothing;
* `never_up = {name, ...}` (or `all_never_up = True`): those guests never come up
  (wait_until_up raises GuestNotUp at once: the fake does not sleep out the timeout);
  `late_up = {name: n}`: that guest comes up only at the (n+1)th wait;
* `arches`, `uefi_arches`, `storage_free_bytes`: what host_info reports.

Thread-safe: the broker calls hypervisors from worker threads (`pools.calls`).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pools.hypervisor import (
    DesktopSpec,
    DomainInfo,
    DomainNotFound,
    GuestNotUp,
    HostInfo,
    HostUnavailable,
    HypervisorError,
    ImageDisk,
    ImageFiles,
)
from pools.screens import ppm_to_png
from vdi.domain import Arch, ConsoleEndpoint, Firmware, ImageTraits, OsFamily

FIRST_VNC_PORT = 5900
# every fake host by URI, so one can migrate a domain to another
_FAKES: dict[str, FakeHypervisor] = {}
_DISK_SERIALS = itertools.count(1)


@dataclass
class FakeDomain:
    """What the fake host knows of one domain (mutable: it is the host's own record)."""

    spec: DesktopSpec
    port: int
    running: bool = True
    suspended: bool = False  # stopped with its memory saved: it resumes on start
    disk_serial: int = 0  # which overlay disk: every new linked clone gets the next number

    @property
    def image_disk(self) -> str:
        """The golden image disk the overlay is backed by."""
        return self.spec.image.disk_path


class FakeHypervisor:
    def __init__(self, uri: str = "fake:///system", *, graphics_listen: str = "127.0.0.1",
                 storage_dir: Path = Path("/fake/images"),
                 log_dir: Path = Path("/fake/log"), memory_mib: int = 16384, cpus: int = 8,
                 disks: dict[str, int] | None = None) -> None:
        self.uri = uri
        self.memory_mib = memory_mib
        self.cpus = cpus
        # name -> serial of the desktop disks in this host's storage; hosts given the same
        # dict share storage (as hosts with a shared folder do)
        self.disks: dict[str, int] = {} if disks is None else disks
        _FAKES[uri] = self
        self.graphics_listen = graphics_listen
        self.storage_dir = storage_dir
        self.log_dir = log_dir
        self.down = False
        self.create_error: HypervisorError | None = None
        self.never_up: set[str] = set()
        self.all_never_up = False
        self.late_up: dict[str, int] = {}
        self.up_waits: list[str] = []  # the names wait_until_up was asked of, in order
        self.resets: list[str] = []  # the names reset_desktop was asked of
        self.addresses: dict[str, list[str]] = {}  # what guest_addresses answers
        self.clock_syncs: list[str] = []  # the names sync_guest_clock was asked of
        self.screenshots: list[str] = []  # the names screenshot was asked of
        self.arches = frozenset({Arch.X86_64})
        self.uefi_arches = frozenset({Arch.X86_64})
        self.storage_free_bytes: int | None = None
        # (image_id, version) -> files, as publish_image recorded them
        self.images: dict[tuple[str, int], ImageFiles] = {}
        self.domains: dict[str, FakeDomain] = {}
        # domains someone else defined on the host (no broker metadata)
        self.foreign: set[str] = set()
        # the current VNC password of each domain, and for how long it was made valid
        self.passwords: dict[str, str] = {}
        self.password_valid_s: dict[str, int] = {}
        # how many domains were ever defined: a second definition of one desktop shows here
        self.defined_count = 0
        self._lock = threading.Lock()

    def _answer(self) -> None:
        if self.down:
            raise HostUnavailable(f"host {self.uri} does not answer (fake host is down)")

    def _domain(self, name: str) -> FakeDomain:
        try:
            return self.domains[name]
        except KeyError:
            raise DomainNotFound(f"host {self.uri}: {name}: no such domain") from None

    def publish_image(self, image_id: str, version: int, disk: ImageDisk,
                      progress: Callable[[int], None] | None = None) -> ImageFiles:
        """Records the version; the disk file must exist, as for the real host, and fit
        in `storage_free_bytes` when set. Idempotent: a version already recorded is
        returned as it was."""
        with self._lock:
            self._answer()
            known = self.images.get((image_id, version))
            if known is not None:
                return known
            if not disk.path.is_file():
                raise HypervisorError(f"image file {disk.path} is missing")
            size = disk.path.stat().st_size
            if self.storage_free_bytes is not None and size > self.storage_free_bytes:
                raise HypervisorError(f"host {self.uri}: image {image_id} needs {size} bytes "
                                      f"and the storage has {self.storage_free_bytes} left")
            if progress is not None:
                progress(size)
            files = ImageFiles(
                disk_path=str(self.storage_dir / f"{image_id}-v{version}-{disk.digest[:12]}.qcow2"),
                disk_bytes=disk.disk_bytes, traits=disk.traits)
            self.images[(image_id, version)] = files
            return files

    def wait_until_up(self, name: str, traits: ImageTraits, timeout_s: float) -> None:
        with self._lock:
            self._answer()
            dom = self._domain(name)
            self.up_waits.append(name)
            if not dom.running:
                raise DomainNotFound(f"desktop {name} stopped while it booted")
            late = self.late_up.get(name, 0)
            if late > 0:
                self.late_up[name] = late - 1
            if self.all_never_up or name in self.never_up or late > 0:
                raise GuestNotUp(f"desktop {name}: its guest agent did not answer within "
                                 f"{timeout_s:.0f} s of its start")

    def create_desktop(self, spec: DesktopSpec) -> ConsoleEndpoint:
        """Defines and starts the domain; an existing one is started and reused.
        Raises `create_error` when set; HypervisorError for an unpublished image."""
        with self._lock:
            self._answer()
            if self.create_error is not None:
                raise self.create_error
            dom = self.domains.get(spec.name)
            if dom is None:
                if spec.image.disk_path not in {f.disk_path for f in self.images.values()}:
                    raise HypervisorError(f"host {self.uri}: create desktop {spec.name}: "
                                          f"backing image {spec.image.disk_path} does not exist")
                self.defined_count += 1
                in_use = self.disks.get(spec.name)
                for other in _FAKES.values():  # QEMU's write lock on a shared disk
                    running = other.domains.get(spec.name)
                    if (other is not self and other.disks is self.disks and in_use is not None
                            and running is not None and running.running
                            and running.disk_serial == in_use):
                        raise HypervisorError(
                            f"host {self.uri}: create desktop {spec.name}: qemu-system-x86_64: "
                            'Failed to get "write" lock. Is another process using the image?')
                serial = self.disks.get(spec.name)
                if serial is None and spec.disk_must_exist:
                    raise HypervisorError(f"host {self.uri}: desktop {spec.name}: its disk "
                                          "is missing; not making a blank one")
                if serial is None:  # a new clone; an existing disk is reused, as libvirt does
                    serial = self.disks[spec.name] = next(_DISK_SERIALS)
                dom = FakeDomain(spec=spec, port=self._free_port(), disk_serial=serial)
                self.domains[spec.name] = dom
            dom.running = True
            dom.suspended = False
            return ConsoleEndpoint(spec.console, self.graphics_listen, dom.port)

    def shut_down_desktop(self, name: str, grace_s: float) -> None:
        with self._lock:
            self._answer()
            self._domain(name).running = False

    def guest_addresses(self, name: str) -> list[str]:
        with self._lock:
            self._answer()
            self._domain(name)
            return list(self.addresses.get(name, []))

    def sync_guest_clock(self, name: str) -> bool:
        with self._lock:
            self._answer()
            self._domain(name)
            self.clock_syncs.append(name)
            return True

    def screenshot(self, name: str) -> bytes:
        """A 4x2 screen: black, with the top-left pixel white."""
        with self._lock:
            self._answer()
            dom = self._domain(name)
            if not dom.running:
                raise DomainNotFound(f"desktop {name} is not running")
            self.screenshots.append(name)
        return ppm_to_png(b"P6 4 2 255\n" + b"\xff" * 3 + b"\x00" * 21)

    def reset_desktop(self, name: str) -> None:
        with self._lock:
            self._answer()
            dom = self._domain(name)
            if not dom.running:
                raise DomainNotFound(f"desktop {name} is not running")
            self.resets.append(name)

    def suspend_desktop(self, name: str) -> None:
        with self._lock:
            self._answer()
            dom = self._domain(name)
            if dom.running:
                dom.running = False
                dom.suspended = True

    def _free_port(self) -> int:
        used = {d.port for d in self.domains.values()}
        port = FIRST_VNC_PORT
        while port in used:
            port += 1
        return port

    def console_endpoint(self, name: str) -> ConsoleEndpoint:
        with self._lock:
            self._answer()
            dom = self._domain(name)
            if not dom.running:
                raise HypervisorError(f"desktop {name} is not running")
            return ConsoleEndpoint(dom.spec.console, self.graphics_listen, dom.port)

    def set_console_password(self, name: str, password: str, valid_s: int) -> None:
        if not password or len(password) > 8:
            raise ValueError("a VNC password must have 1 to 8 characters")
        with self._lock:
            self._answer()
            self._domain(name)
            self.passwords[name] = password
            self.password_valid_s[name] = valid_s

    def destroy_desktop(self, name: str, keep_disk: bool = False) -> None:
        """Idempotent: an unknown name is already destroyed."""
        with self._lock:
            self._answer()
            self.domains.pop(name, None)
            self.passwords.pop(name, None)
            self.password_valid_s.pop(name, None)
            if not keep_disk:
                self.disks.pop(name, None)

    def host_info(self) -> HostInfo:
        with self._lock:
            self._answer()
            return HostInfo(hostname=self.uri, memory_mib=self.memory_mib, cpus=self.cpus,
                            arches=self.arches, uefi_arches=self.uefi_arches,
                            storage_free_bytes=self.storage_free_bytes)

    def migrate_desktop(self, name: str, dest_uri: str, dest_listen: str) -> None:
        with self._lock:
            self._answer()
            dom = self._domain(name)
            if not dom.running:
                raise HypervisorError(f"host {self.uri}: migrate {name}: domain is not running")
        dest = _FAKES.get(dest_uri)
        if dest is None or dest.down:
            raise HypervisorError(f"host {self.uri}: migrate {name}: {dest_uri} does not answer")
        if dest.disks is not self.disks:
            raise HypervisorError(f"host {self.uri}: migrate {name}: no shared storage "
                                  f"with {dest_uri}")
        with dest._lock:
            dest.domains[name] = FakeDomain(spec=dom.spec, port=dest._free_port(),
                                            disk_serial=dom.disk_serial)
            dest.defined_count += 1
        with self._lock:
            self.domains.pop(name, None)

    def list_desktops(self) -> list[DomainInfo]:
        with self._lock:
            self._answer()
            return [DomainInfo(name=name, desktop_id=d.spec.desktop_id, pool_id=d.spec.pool_id,
                               running=d.running) for name, d in self.domains.items()]

    def list_domain_names(self) -> list[str]:
        with self._lock:
            self._answer()
            return sorted({*self.domains, *self.foreign})

    def serial_log_path(self, name: str) -> str:
        with self._lock:
            self._answer()
            return str(self.log_dir / f"{name}.serial.log")

    # -- test helpers (not part of the Hypervisor protocol) ------------------------------

    def adopt(self, name: str, desktop_id: str, pool_id: str, port: int) -> None:
        """A running domain this host has already (made before this fake existed, as a
        benchmark's seeded desktops are)."""
        image = ImageFiles(disk_path=str(self.storage_dir / "seeded-disk.qcow2"),
                           disk_bytes=0, traits=ImageTraits(Firmware.BIOS, OsFamily.LINUX))
        spec = DesktopSpec(name=name, desktop_id=desktop_id, pool_id=pool_id, vcpus=1,
                           memory_mib=128, image=image)
        with self._lock:
            self.domains[name] = FakeDomain(spec=spec, port=port,
                                            disk_serial=self.disks.setdefault(
                                                name, next(_DISK_SERIALS)))

    def crash(self) -> None:
        """The host dies: it stops answering and its guests die with it."""
        with self._lock:
            self.down = True
            for dom in self.domains.values():
                dom.running = False

    def stop(self, name: str) -> None:
        """Power the domain off, as a guest shutting itself down would."""
        with self._lock:
            self._domain(name).running = False


