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
from defusedxml.ElementTree import fromstring as parse_xml

from pools.hosts import Host
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
    NetworkSpec,
    new_vnc_password,
)
from pools.libvirt.agent import addresses_of, agent_command, wait_for_agent
from pools.libvirt.connection import HostConnection
from pools.libvirt.domain_xml import (
    METADATA_NS,
    DomainSpec,
    Nic,
    build_domain_xml,
    console_listen,
    console_password_device,
    desktop_metadata,
    with_graphics_listen,
)
from pools.libvirt.network_xml import build_network_xml
from pools.libvirt.profiles import ProfileError, desktop_mac, profile_for
from pools.libvirt.storage import HostStorage
from pools.screens import BadScreenDump, png_size, ppm_to_png
from pools.seed import nocloud_seed
from vdi.domain import Arch, ConsoleEndpoint, ConsoleKind, ImageTraits
from vdi.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
# How long a probe guest under KVM may take to reach its init before KVM counts as not
# working here (a nested or broken KVM hangs instead of failing).
KVM_PROBE_BOUND_S = 30
SCREENSHOT_MAX_BYTES = 3 * 8192 * 8192 + 64  # a PPM of the largest screen, and its header


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
        self._kvm_arches: frozenset[Arch] | None = None  # read once from capabilities
        self._cache_file = None
        if cache_dir is not None:
            safe = "".join(c if c.isalnum() else "_" for c in uri)
            self._cache_file = cache_dir / f"{safe}.domain-type"

    def close(self) -> None:
        """Close this adapter's connections; a later call opens a new one."""
        self._conn.close()

    def publish_image(self, image_id: str, version: int, disk: ImageDisk,
                      progress: Callable[[int], None] | None = None) -> ImageFiles:
        return self._storage.publish_image(image_id, version, disk, progress)

    # -- domain type ------------------------------------------------------------------

    def domain_type(self, image: ImageFiles) -> str:
        """The domain type that boots `image` here: TCG ('qemu') for an architecture the
        host offers no KVM for (an aarch64 desktop on an x86 host, whatever the setting);
        else the setting, else KVM only if a probe guest under KVM reaches its init
        within a bound, else TCG."""
        if self._kvm_arches is None:
            conn = self._conn.get()
            with self._conn.errors("capabilities"):
                self._kvm_arches = kvm_arches(conn.getCapabilities())
        if image.traits.arch not in self._kvm_arches:
            return "qemu"
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
        """KVM when the host offers it and a guest comes up under it: a linked clone of
        the image started under KVM whose agent connects within a bound (on these
        machines a Linux guest under KVM hangs after its firmware). An image without an
        agent cannot tell: the host's word is taken."""
        conn = self._conn.get()
        if not image.traits.agent:
            return "kvm"
        name = f"vdi-probe-kvm-{secrets.token_hex(3)}"
        spec = DesktopSpec(name=name, desktop_id="probe", pool_id="probe", vcpus=1,
                           memory_mib=512, image=image, network="none")
        disk = self._storage.desktop_disk(spec, domain_defined=False)
        try:
            with self._conn.errors("probe kvm"):
                dom = conn.createXML(self._domain_xml(spec, "kvm", disk), 0)
        except HostUnavailable:
            self._storage.delete_desktop_disk(name)
            raise
        except HypervisorError as e:  # QEMU refused to start under KVM at all
            log.info("host %s: a guest does not start under KVM: %s", self.uri, e)
            self._storage.delete_desktop_disk(name)
            return "qemu"
        try:
            self.wait_until_up(name, image.traits, KVM_PROBE_BOUND_S)
            return "kvm"
        except HypervisorError:
            return "qemu"
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
            self._storage.delete_desktop_disk(name)
            if self._conn.is_local:
                Path(self.serial_log_path(name)).unlink(missing_ok=True)

    # -- desktops ---------------------------------------------------------------------

    def _domain_xml(self, spec: DesktopSpec, dtype: str, disk: str,
                    seed: str | None = None) -> str:
        """The domain document of `spec` on this host. Raises HypervisorError for a pool
        option the image cannot do (secure boot)."""
        try:
            profile = profile_for(spec.image.traits, spec.console, dtype, spec.secure_boot)
        except ProfileError as e:
            raise HypervisorError(f"desktop {spec.name}: {e}") from e
        # The initial password is random and never stored: the console is unusable until
        # the broker sets a per-connection one.
        return build_domain_xml(DomainSpec(
            name=spec.name, domain_type=dtype, desktop_id=spec.desktop_id,
            pool_id=spec.pool_id, vcpus=spec.vcpus, memory_mib=spec.memory_mib,
            profile=profile, disk_path=disk, serial_log_path=self.serial_log_path(spec.name),
            console=spec.console, listen=self.graphics_listen,
            console_password=new_vnc_password(), nic=_nic(spec), seed_path=seed))

    def create_desktop(self, spec: DesktopSpec) -> ConsoleEndpoint:
        dtype = self.domain_type(spec.image)
        conn = self._conn.get()
        with self._conn.errors(f"create desktop {spec.name}"):
            dom = _domain_or_none(conn, spec.name)
            disk = self._storage.desktop_disk(spec, domain_defined=dom is not None)
            if spec.network_spec is not None:
                self._ensure_network(spec.network_spec)
            seed = None
            if spec.hostname:  # written again on every start: a revert keeps the name
                seed = self._storage.desktop_seed(spec.name, nocloud_seed(
                    spec.desktop_id, spec.hostname, spec.user_data))
            if dom is None:
                dom = conn.defineXML(self._domain_xml(spec, dtype, disk, seed))
            if not dom.isActive():
                dom.create()
        return self.console_endpoint(spec.name)

    def _ensure_network(self, spec: NetworkSpec) -> None:
        """The department's network on this host: defined, started and set to start with
        the host, if it is not (one of that name the host has already is used as is)."""
        conn = self._conn.get()
        with self._conn.errors(f"network {spec.name}"):
            try:
                net = conn.networkLookupByName(spec.libvirt_name)
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                    raise
                net = conn.networkDefineXML(build_network_xml(spec))
                net.setAutostart(1)
            if not net.isActive():
                net.create()

    def wait_until_up(self, name: str, traits: ImageTraits, timeout_s: float) -> None:
        if not traits.agent:
            self._wait_running(name, min(float(traits.boot_delay_s), timeout_s))
            if traits.boot_delay_s > timeout_s:
                raise GuestNotUp(f"desktop {name}: its boot delay ({traits.boot_delay_s} s) "
                                 f"is longer than the boot timeout ({timeout_s:.0f} s)")
            return
        wait_for_agent(self._conn, name, timeout_s)

    def _wait_running(self, name: str, seconds: float) -> None:
        """Sleep `seconds` while the domain keeps running; DomainNotFound if it stops."""
        deadline = time.monotonic() + seconds
        dom = self._lookup(name)
        while True:
            with self._conn.errors(f"wait for {name}"):
                if not dom.isActive():
                    raise DomainNotFound(f"desktop {name} stopped while it booted")
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 1.0))

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
            deadline = time.monotonic() + grace_s
            # the guest's agent first (it shuts the system down properly), then the ACPI
            # power button halfway through the grace (a guest may ignore either)
            asked_agent = self._agent_shutdown(name)
            acpi_at = time.monotonic() + (grace_s / 2 if asked_agent else 0)
            pressed = False
            while time.monotonic() < deadline:
                if not dom.isActive():
                    return
                if not pressed and time.monotonic() >= acpi_at:
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.shutdown()
                    pressed = True
                time.sleep(0.5)
            log.info("desktop %s did not power off within %.0f s: forcing it off", name,
                     grace_s)
            _ignore_gone(dom.destroy)

    def _agent_shutdown(self, name: str) -> bool:
        """Ask the guest agent to power the guest off; False when it does not answer."""
        try:
            agent_command(self._conn, name, "guest-shutdown", {"mode": "powerdown"})
        except DomainNotFound:
            raise
        except HypervisorError as e:
            # the agent answers nothing when the guest goes down at once: that is a yes
            return "disappeared" in str(e) or "disconnected" in str(e)
        return True

    def agent(self, name: str, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """A guest agent command on desktop `name` (e.g. 'guest-get-host-name'): its
        'return' value. Raises HypervisorError when the agent does not answer or refuses,
        DomainNotFound when the desktop is gone. Helpdesk tools and tests go through here."""
        return agent_command(self._conn, name, command, arguments)

    def guest_addresses(self, name: str) -> list[str]:
        try:
            return addresses_of(agent_command(self._conn, name,
                                              "guest-network-get-interfaces"))
        except DomainNotFound:
            raise
        except HypervisorError:
            return []

    def sync_guest_clock(self, name: str) -> bool:
        dom = self._lookup(name)
        now = time.time()
        try:
            with self._conn.errors(f"set the clock of {name}"):
                dom.setTime({"seconds": int(now), "nseconds": int((now % 1) * 1e9)}, 0)
        except DomainNotFound:
            raise
        except HypervisorError:
            return False
        return True

    def reset_desktop(self, name: str) -> None:
        dom = self._lookup(name)
        with self._conn.errors(f"reset {name}"):
            if not dom.isActive():
                raise DomainNotFound(f"desktop {name} is not running")
            dom.reset(0)

    def screenshot(self, name: str) -> bytes:
        dom = self._lookup(name)
        conn = self._conn.get()
        with self._conn.errors(f"screenshot of {name}"):
            if not dom.isActive():
                raise DomainNotFound(f"desktop {name} is not running")
            stream = conn.newStream(0)
            try:
                mime = dom.screenshot(stream, 0, 0)  # PNG from newer QEMU, else PPM
                chunks, size = [], 0
                while chunk := stream.recv(1 << 18):
                    if not isinstance(chunk, bytes):  # -2: would block (not on a
                        continue                      # blocking stream; kept safe)
                    size += len(chunk)
                    if size > SCREENSHOT_MAX_BYTES:
                        raise HypervisorError(f"screenshot of {name}: larger than "
                                              f"{SCREENSHOT_MAX_BYTES} bytes")
                    chunks.append(chunk)
                stream.finish()
            except BaseException:
                with contextlib.suppress(libvirt.libvirtError):
                    stream.abort()
                raise
        data = b"".join(chunks)
        try:
            if mime == "image/png":
                png_size(data)  # a PNG's header, or refused
                return data
            return ppm_to_png(data)
        except BadScreenDump as e:
            raise HypervisorError(f"screenshot of {name} ({mime}): {e}") from e

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
            arches = guest_arches(conn.getCapabilities())
            uefi = frozenset(a for a in arches if _boots_uefi(conn, a))
            return HostInfo(hostname=conn.getHostname(), memory_mib=int(info[1]),
                            cpus=int(info[2]), arches=arches, uefi_arches=uefi,
                            storage_free_bytes=self._storage.free_bytes())

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
                # and a UEFI desktop's NVRAM file (its firmware variables) with its disk;
                # kept with a kept disk (the desktop runs on elsewhere, boot entries and all)
                flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | (
                    libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM if keep_disk
                    else libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
                _ignore_gone(lambda: dom.undefineFlags(flags))
        if not keep_disk:
            self._storage.delete_desktop_disk(name)
        if self._conn.is_local:
            Path(self.serial_log_path(name)).unlink(missing_ok=True)

    def list_domain_names(self) -> list[str]:
        conn = self._conn.get()
        with self._conn.errors("list domains"):
            return sorted(dom.name() for dom in conn.listAllDomains(0))

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


def _nic(spec: DesktopSpec) -> Nic | None:
    """The network card of `spec.network`: 'user', 'network:NAME', 'bridge:NAME', 'none'."""
    if spec.network == "none":
        return None
    if spec.network_spec is not None:
        return Nic(kind="network", source=spec.network_spec.libvirt_name,
                   mac=desktop_mac(spec.desktop_id))
    kind, _, source = spec.network.partition(":")
    return Nic(kind=kind, source=source, mac=desktop_mac(spec.desktop_id))


def guest_arches(capabilities_xml: str) -> frozenset[Arch]:
    """The architectures a host's capabilities say it runs guests of (that we know)."""
    known = {a.value: a for a in Arch}
    root = parse_xml(capabilities_xml)
    return frozenset(known[el.get("name", "")] for el in root.findall("./guest/arch")
                     if el.get("name", "") in known)


def kvm_arches(capabilities_xml: str) -> frozenset[Arch]:
    """The architectures a host's capabilities offer KVM for (its own, if /dev/kvm is
    usable); every other architecture it runs is emulated (TCG)."""
    known = {a.value: a for a in Arch}
    root = parse_xml(capabilities_xml)
    return frozenset(known[arch.get("name", "")] for arch in root.findall("./guest/arch")
                     if arch.get("name", "") in known
                     and arch.find("./domain[@type='kvm']") is not None)


def _boots_uefi(conn: Any, arch: Arch) -> bool:
    """The host has UEFI firmware for `arch` (its domain capabilities list 'efi')."""
    machine = "virt" if arch is Arch.AARCH64 else "q35"
    for virt_type in ("kvm", "qemu"):
        try:
            caps = conn.getDomainCapabilities(None, arch.value, machine, virt_type, 0)
        except libvirt.libvirtError:
            continue
        values = parse_xml(caps).findall("./os/enum[@name='firmware']/value")
        return any(v.text == "efi" for v in values)
    return False


def adapter_for(host: Host, settings: Settings) -> LibvirtHost:
    """The adapter for a registered host; the settings fill what the record leaves blank."""
    extra = {"log_dir": Path(host.log_dir)} if host.log_dir else {}
    return LibvirtHost(host.uri, storage_pool=host.storage_pool or settings.storage_pool,
                       storage_dir=Path(host.storage_dir or settings.storage_dir),
                       domain_type=settings.domain_type,
                       graphics_listen=host.graphics_listen or settings.graphics_listen,
                       cache_dir=Path(settings.state_dir) / "hosts", **extra)
