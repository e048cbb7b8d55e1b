"""`LibvirtHost`: the `pools.hypervisor.Hypervisor` of one libvirt host.

One per host URI. Methods block (call them through `pools.calls`), are idempotent where
the interface says so, and raise only `pools.hypervisor` errors.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import libvirt

from pools.hosts import Host
from pools.hypervisor import (
    DesktopSpec,
    DomainInfo,
    HostInfo,
    HypervisorError,
    ImageFiles,
    new_vnc_password,
)
from pools.libvirt.connection import HostConnection
from pools.libvirt.domain_xml import (
    METADATA_NS,
    DomainSpec,
    build_domain_xml,
    console_listen,
    console_password_device,
    desktop_metadata,
    with_graphics_listen,
)
from pools.libvirt.storage import HostStorage
from vdi.domain import ConsoleEndpoint, ConsoleKind
from vdi.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
# How long a probe guest under KVM may take to reach its init before KVM counts as not
# working here (a nested or broken KVM hangs instead of failing).
KVM_PROBE_BOUND_S = 15


class LibvirtHost:
    def __init__(self, uri: str, *, storage_pool: str, storage_dir: Path,
                 domain_type: str = "auto", graphics_listen: str = "127.0.0.1",
                 log_dir: Path = Path("/var/log/libvirt/qemu"),
                 cache_dir: Path | None = None) -> None:
        self.uri = uri
        self.graphics_listen = graphics_listen
        self.log_dir = log_dir
        self._conn = HostConnection(uri)
        self._storage = HostStorage(self._conn, storage_pool, storage_dir)
        self._domain_type: str | None = None if domain_type == "auto" else domain_type
        self._cache_file = None
        if cache_dir is not None:
            safe = "".join(c if c.isalnum() else "_" for c in uri)
            self._cache_file = cache_dir / f"{safe}.domain-type"

    def close(self) -> None:
        """Close this adapter's connections; a later call opens a new one."""
        self._conn.close()

    def publish_image(self, image_id: str, version: int, source_dir: Path) -> ImageFiles:
        return self._storage.publish_image(image_id, version, source_dir)

    # -- domain type ------------------------------------------------------------------

    def domain_type(self, image: ImageFiles) -> str:
        """The domain type that boots here: the setting, else KVM only if a probe guest
        under KVM reaches its init within a bound, else TCG ('qemu')."""
        if self._domain_type is None and self._cache_file and self._cache_file.exists():
            cached = self._cache_file.read_text().strip()
            if cached in ("kvm", "qemu"):
                self._domain_type = cached
        if self._domain_type is None:
            self._domain_type = self._detect_domain_type(image)
            log.info("host %s: domain type %s (detected)", self.uri, self._domain_type)
            if self._cache_file:
                self._cache_file.parent.mkdir(parents=True, exist_ok=True)
                self._cache_file.write_text(self._domain_type + "\n")
        return self._domain_type

    def _detect_domain_type(self, image: ImageFiles) -> str:
        conn = self._conn.get()
        with self._conn.errors("capabilities"):
            caps = conn.getCapabilities()
        if "<domain type='kvm'" not in caps and '<domain type="kvm"' not in caps:
            return "qemu"
        if not self._conn.is_local:
            return "qemu"  # cannot read a remote serial log; the setting can force kvm
        name = f"vdi-probe-kvm-{secrets.token_hex(3)}"
        serial = self.log_dir / f"{name}.serial.log"
        xml = self._domain_xml(name, "kvm", "probe", "probe", 1, 128, image, None)
        with self._conn.errors("probe kvm"):
            dom = conn.createXML(xml, 0)
        try:
            deadline = time.monotonic() + KVM_PROBE_BOUND_S
            while time.monotonic() < deadline:
                if serial.exists() and b"VDI-READY" in serial.read_bytes():
                    return "kvm"
                time.sleep(0.2)
            return "qemu"
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
            serial.unlink(missing_ok=True)

    # -- desktops ---------------------------------------------------------------------

    def _domain_xml(self, name: str, dtype: str, desktop_id: str, pool_id: str, vcpus: int,
                    memory_mib: int, image: ImageFiles, disk: str | None,
                    console: ConsoleKind = ConsoleKind.VNC) -> str:
        # The initial password is random and never stored: the console is unusable until
        # the broker sets a per-connection one.
        return build_domain_xml(DomainSpec(
            name=name, domain_type=dtype, desktop_id=desktop_id, pool_id=pool_id,
            vcpus=vcpus, memory_mib=memory_mib, kernel_path=image.kernel_path,
            initrd_path=image.initrd_path, cmdline=image.cmdline, disk_path=disk,
            serial_log_path=self.serial_log_path(name), console=console,
            listen=self.graphics_listen, console_password=new_vnc_password()))

    def create_desktop(self, spec: DesktopSpec) -> ConsoleEndpoint:
        dtype = self.domain_type(spec.image)
        conn = self._conn.get()
        with self._conn.errors(f"create desktop {spec.name}"):
            dom = _domain_or_none(conn, spec.name)
            disk = self._storage.desktop_disk(spec, domain_defined=dom is not None)
            if dom is None:
                dom = conn.defineXML(self._domain_xml(
                    spec.name, dtype, spec.desktop_id, spec.pool_id, spec.vcpus,
                    spec.memory_mib, spec.image, disk, spec.console))
            if not dom.isActive():
                dom.create()
        return self.console_endpoint(spec.name)

    def _lookup(self, name: str) -> Any:
        conn = self._conn.get()
        with self._conn.errors(f"look up {name}"):
            return conn.lookupByName(name)

    def console_endpoint(self, name: str) -> ConsoleEndpoint:
        dom = self._lookup(name)
        with self._conn.errors(f"graphics of {name}"):
            if not dom.isActive():
                raise HypervisorError(f"desktop {name} is not running")
            xml = dom.XMLDesc(0)
        for kind in ConsoleKind:  # the one its domain was made with
            found = console_listen(xml, kind)
            if found is not None:
                listen, port = found
                return ConsoleEndpoint(kind, listen or self.graphics_listen, port)
        raise HypervisorError(f"desktop {name} has no console")

    def shut_down_desktop(self, name: str, grace_s: float) -> None:
        dom = self._lookup(name)
        with self._conn.errors(f"shut down {name}"):
            if not dom.isActive():
                return
            with contextlib.suppress(libvirt.libvirtError):  # a guest may ignore ACPI
                dom.shutdown()
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline:
                if not dom.isActive():
                    return
                time.sleep(0.5)
            log.info("desktop %s did not power off within %.0f s: forcing it off", name,
                     grace_s)
            _ignore_gone(dom.destroy)

    def suspend_desktop(self, name: str) -> None:
        dom = self._lookup(name)
        with self._conn.errors(f"suspend {name}"):
            if dom.isActive():
                dom.managedSave(0)

    def set_console_password(self, name: str, password: str, valid_s: int) -> None:
        if not password or len(password) > 8:
            raise ValueError("a VNC password must have 1 to 8 characters")
        dom = self._lookup(name)
        with self._conn.errors(f"set console password of {name}"):
            until = datetime.now(UTC) + timedelta(seconds=valid_s)
            device = console_password_device(dom.XMLDesc(0), password, until)
            if device is None:
                raise HypervisorError(f"desktop {name} has no VNC console")
            dom.updateDeviceFlags(device, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def host_info(self) -> HostInfo:
        conn = self._conn.get()
        with self._conn.errors("host info"):
            info = conn.getInfo()  # [model, memory MiB, cpus, MHz, nodes, sockets, ...]
            return HostInfo(hostname=conn.getHostname(), memory_mib=int(info[1]),
                            cpus=int(info[2]))

    def migrate_desktop(self, name: str, dest_uri: str, dest_listen: str) -> None:
        dom = self._lookup(name)
        with self._conn.errors(f"migrate {name} to {dest_uri}"):
            xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE)
            params = {libvirt.VIR_MIGRATE_PARAM_DEST_XML: with_graphics_listen(xml, dest_listen)}
            # UNSAFE: libvirt calls a disk "unsafe" unless it knows the file system as a
            # cluster one; the hosts share the folder the disks live in (the operator's
            # promise when a host is added with shared storage).
            flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
                     | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
                     | libvirt.VIR_MIGRATE_UNSAFE)
            dom.migrateToURI3(dest_uri, params, flags)

    def destroy_desktop(self, name: str, keep_disk: bool = False) -> None:
        conn = self._conn.get()
        with self._conn.errors(f"destroy desktop {name}"):
            dom = _domain_or_none(conn, name)
            if dom is not None:
                if dom.isActive():
                    _ignore_gone(dom.destroy)
                # with its saved memory, if it was suspended: an undefine without the
                # flag is refused, and a copy left defined would later resume old memory
                # over a newer disk
                _ignore_gone(lambda: dom.undefineFlags(
                    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE))
        if not keep_disk:
            self._storage.delete_desktop_disk(name)
        if self._conn.is_local:
            Path(self.serial_log_path(name)).unlink(missing_ok=True)

    def list_desktops(self) -> list[DomainInfo]:
        conn = self._conn.get()
        out: list[DomainInfo] = []
        with self._conn.errors("list domains"):
            for dom in conn.listAllDomains(0):
                try:
                    meta = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, 0)
                except libvirt.libvirtError as e:
                    if e.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN_METADATA,
                                              libvirt.VIR_ERR_NO_DOMAIN):
                        continue  # not one of ours, or gone since the listing
                    raise  # a failed query is not "the desktop is gone"
                desktop_id, pool_id = desktop_metadata(meta)
                try:
                    running = bool(dom.isActive())
                except libvirt.libvirtError as e:
                    if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                        raise
                    continue  # undefined since listAllDomains: not an error of the listing
                out.append(DomainInfo(name=dom.name(), desktop_id=desktop_id,
                                      pool_id=pool_id, running=running))
        return out

    def serial_log_path(self, name: str) -> str:
        return str(self.log_dir / f"{name}.serial.log")


def _domain_or_none(conn: Any, name: str) -> Any | None:
    """The domain `name`, or None when the host has no such domain."""
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def _ignore_gone(fn: Callable[[], T]) -> None:
    try:
        fn()
    except libvirt.libvirtError as e:
        if e.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
            raise


def adapter_for(host: Host, settings: Settings) -> LibvirtHost:
    """The adapter for a registered host; the settings fill what the record leaves blank."""
    extra = {"log_dir": Path(host.log_dir)} if host.log_dir else {}
    return LibvirtHost(host.uri, storage_pool=host.storage_pool or settings.storage_pool,
                       storage_dir=Path(host.storage_dir or settings.storage_dir),
                       domain_type=settings.domain_type,
                       graphics_listen=host.graphics_listen or settings.graphics_listen,
                       cache_dir=Path(settings.state_dir) / "hosts", **extra)
