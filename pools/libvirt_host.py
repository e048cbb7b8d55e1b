"""The libvirt adapter: the only module of the project that imports libvirt.

One `LibvirtHost` per host URI. Methods block (call them through `pools.calls`), are
idempotent where the interface says so, and raise only `pools.hypervisor` errors.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from xml.etree import ElementTree as ET
from xml.sax.saxutils import quoteattr

import libvirt
from defusedxml.ElementTree import fromstring as parse_xml

from pools.hosts import Host
from pools.hypervisor import (
    IMAGE_FILES,
    DesktopSpec,
    DomainInfo,
    DomainNotFound,
    GraphicsEndpoint,
    HostInfo,
    HostUnavailable,
    HypervisorError,
    ImageFiles,
    image_cmdline,
    image_digest,
    new_vnc_password,
    qcow2_virtual_size,
)
from vdi.settings import Settings

log = logging.getLogger(__name__)
METADATA_NS = "urn:vdi-broker:desktop:1"
METADATA_KEY = "vdi"
T = TypeVar("T")

# libvirt prints every error to stderr unless a handler is registered.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
# Remote hosts: probe every KEEPALIVE_S, give up after KEEPALIVE_COUNT missed answers, so
# a call to a host whose network is gone fails in ~20 s instead of TCP's minutes.
KEEPALIVE_S = 5
KEEPALIVE_COUNT = 3
_event_loop_lock = threading.Lock()
_event_loop_started = False


def ensure_event_loop() -> None:
    """libvirt's keepalive needs its event loop running in this process (once); it must
    run before the connections that use keepalive are opened, and keep running."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True

_CONNECTION_ERRORS = {
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
    libvirt.VIR_ERR_AUTH_FAILED,
    libvirt.VIR_ERR_AUTH_UNAVAILABLE,
}


class LibvirtHost:
    def __init__(self, uri: str, *, storage_pool: str, storage_dir: Path,
                 domain_type: str = "auto", graphics_listen: str = "127.0.0.1",
                 log_dir: Path = Path("/var/log/libvirt/qemu"),
                 cache_dir: Path | None = None) -> None:
        self.uri = uri
        self.storage_pool = storage_pool
        self.storage_dir = storage_dir
        self.domain_type_setting = domain_type
        self.graphics_listen = graphics_listen
        self.log_dir = log_dir
        # One connection per calling thread, never shared (see _connection); all of them
        # are kept here so close() can close them.
        self._local = threading.local()
        self._conns: set[Any] = set()
        self._generation = 0  # close() starts a new one: older thread connections are void
        self._lock = threading.Lock()
        self._domain_type: str | None = None if domain_type == "auto" else domain_type
        self._cache_file = None
        if cache_dir is not None:
            safe = "".join(c if c.isalnum() else "_" for c in uri)
            self._cache_file = cache_dir / f"{safe}.domain-type"

    # -- connection -----------------------------------------------------------------

    def _connection(self) -> Any:
        """This thread's connection to the host, opened on first use and again after it
        failed. Never shared between threads: with libvirt 9.0, two threads calling
        through one keepalive connection to a host whose link is cut crash the process
        (SIGSEGV in the client's RPC event loop; one thread per connection does not),
        seen with tests/pools/test_multihost.py's cut-network test."""
        held = getattr(self._local, "held", None)
        if held is not None:
            generation, conn = held
            if generation == self._generation:
                with contextlib.suppress(libvirt.libvirtError):
                    if conn.isAlive():
                        return conn
            self._drop()
        remote = not self._is_local()
        if remote:
            ensure_event_loop()
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as e:
            raise HostUnavailable(f"host {self.uri} does not answer: {_msg(e)}") from e
        with self._lock:
            self._conns.add(conn)
            self._local.held = (self._generation, conn)
        if remote:
            try:
                conn.setKeepAlive(KEEPALIVE_S, KEEPALIVE_COUNT)
            except libvirt.libvirtError as e:
                self._drop()
                raise HostUnavailable(f"host {self.uri} does not answer: {_msg(e)}") from e
        return conn

    def _drop(self) -> None:
        """Forget (and close) this thread's connection: it failed or is not alive."""
        held = getattr(self._local, "held", None)
        self._local.held = None
        if held is None:
            return
        with self._lock:
            if held[1] not in self._conns:
                return  # close() closed it already
            self._conns.discard(held[1])
        with contextlib.suppress(libvirt.libvirtError):
            held[1].close()

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Translate libvirt errors; drop the connection when it is the transport failing."""
        try:
            yield
        except libvirt.libvirtError as e:
            code = e.get_error_code()
            if _is_transport_error(e):
                self._drop()
                raise HostUnavailable(f"host {self.uri}: {what}: {_msg(e)}") from e
            if code == libvirt.VIR_ERR_NO_DOMAIN:
                raise DomainNotFound(f"host {self.uri}: {what}: no such domain") from e
            raise HypervisorError(f"host {self.uri}: {what}: {_msg(e)}") from e

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, set()
            self._generation += 1
        for conn in conns:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    # -- storage ----------------------------------------------------------------------

    def _pool(self) -> Any:
        conn = self._connection()
        with self._errors("storage pool"):
            try:
                pool = conn.storagePoolLookupByName(self.storage_pool)
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                    raise
                xml = (f"<pool type='dir'><name>{_x(self.storage_pool)}</name>"
                       f"<target><path>{_x(str(self.storage_dir))}</path></target></pool>")
                pool = conn.storagePoolDefineXML(xml, 0)
                pool.build(0)
                pool.setAutostart(1)
            if not pool.isActive():
                pool.create(0)
            return pool

    def _volume(self, pool: Any, name: str) -> Any | None:
        try:
            return pool.storageVolLookupByName(name)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return None
            raise

    def publish_image(self, image_id: str, version: int, source_dir: Path) -> ImageFiles:
        pool = self._pool()
        paths: dict[str, str] = {}
        for fname in IMAGE_FILES:
            if not (source_dir / fname).is_file():
                raise HypervisorError(f"image file {source_dir / fname} is missing "
                                      "(build the image first)")
        digest = image_digest(source_dir)[:12]
        disk_bytes = qcow2_virtual_size(source_dir / "disk.qcow2")
        with self._errors(f"publish image {image_id} v{version}"):
            _refresh(pool)
            for fname in IMAGE_FILES:
                src = source_dir / fname
                vol_name = f"{image_id}-v{version}-{digest}-{fname}"
                vol = self._volume(pool, vol_name)
                if vol is not None and fname == "disk.qcow2" and vol.info()[1] != disk_bytes:
                    vol.delete(0)  # a copy that does not show the image's disk: redo it
                    vol = None
                if vol is None:
                    vol = self._upload(pool, vol_name, src)
                paths[fname] = vol.path()
        return ImageFiles(disk_path=paths["disk.qcow2"], kernel_path=paths["vmlinuz"],
                          initrd_path=paths["initrd.img"], cmdline=image_cmdline(source_dir),
                          disk_bytes=disk_bytes)

    def _upload(self, pool: Any, vol_name: str, src: Path) -> Any:
        """Upload into a temporary volume, then make it visible under its final name only
        by creating it complete: a crash mid-upload leaves a '.part' volume, never a torn one."""
        size = src.stat().st_size
        part = self._volume(pool, vol_name + ".part")
        if part is not None:
            part.delete(0)
        vol = pool.createXML(
            f"<volume><name>{_x(vol_name)}.part</name><capacity unit='bytes'>{size}</capacity>"
            "<target><format type='raw'/></target></volume>", 0)
        conn = self._connection()
        stream = conn.newStream(0)
        vol.upload(stream, 0, size, 0)
        with src.open("rb") as f:
            while chunk := f.read(1 << 20):
                stream.send(chunk)
        stream.finish()
        fmt = "qcow2" if vol_name.endswith(".qcow2") else "raw"
        # The copy below converts from the source volume's format, which libvirt knows
        # only after probing the uploaded bytes: without the refresh, a qcow2 file
        # uploaded into a 'raw' volume would be wrapped as the *contents* of a new disk.
        _refresh(pool)
        vol = pool.storageVolLookupByName(vol_name + ".part")
        probed = parse_xml(vol.XMLDesc(0)).find("./target/format")
        if probed is None or probed.get("type") != fmt:
            vol.delete(0)
            raise HypervisorError(f"uploaded {src.name} is not a {fmt} file")
        final = pool.createXMLFrom(
            f"<volume><name>{_x(vol_name)}</name><capacity unit='bytes'>{size}</capacity>"
            f"<target><format type='{fmt}'/></target></volume>", vol, 0)
        vol.delete(0)
        return final


    # -- domains ----------------------------------------------------------------------

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
        conn = self._connection()
        with self._errors("capabilities"):
            caps = conn.getCapabilities()
        if "<domain type='kvm'" not in caps and '<domain type="kvm"' not in caps:
            return "qemu"
        if not self._is_local():
            return "qemu"  # cannot read a remote serial log; the setting can force kvm
        name = f"vdi-probe-kvm-{secrets.token_hex(3)}"
        serial = self.log_dir / f"{name}.serial.log"
        xml = self._domain_xml(name, "kvm", "probe", "probe", 1, 128, image, None, serial,
                               new_vnc_password())
        with self._errors("probe kvm"):
            dom = conn.createXML(xml, 0)
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if serial.exists() and b"VDI-READY" in serial.read_bytes():
                    return "kvm"
                time.sleep(0.2)
            return "qemu"
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
            serial.unlink(missing_ok=True)

    def _is_local(self) -> bool:
        return self.uri.startswith(("qemu:///", "qemu+unix:///"))

    def _domain_xml(self, name: str, dtype: str, desktop_id: str, pool_id: str, vcpus: int,
                    memory_mib: int, image: ImageFiles, disk: str | None, serial: Path,
                    password: str) -> str:
        disk_xml = ""
        if disk:
            disk_xml = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                        f"<source file={quoteattr(disk)}/><target dev='vda' bus='virtio'/>"
                        "</disk>")
        return f"""<domain type='{dtype}'>
  <name>{_x(name)}</name>
  <metadata><vdi:desktop xmlns:vdi='{METADATA_NS}' id={quoteattr(desktop_id)}
    pool={quoteattr(pool_id)}/></metadata>
  <memory unit='MiB'>{int(memory_mib)}</memory>
  <vcpu>{int(vcpus)}</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{_x(image.kernel_path)}</kernel><initrd>{_x(image.initrd_path)}</initrd>
    <cmdline>{_x(image.cmdline)}</cmdline></os>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <devices>
    {disk_xml}
    <serial type='file'><source path={quoteattr(str(serial))} append='on'/>
      <target port='0'/></serial>
    <graphics type='vnc' autoport='yes' listen={quoteattr(self.graphics_listen)}
      passwd={quoteattr(password)}/>
    <video><model type='vga'/></video>
    <memballoon model='none'/>
  </devices>
</domain>"""

    def create_desktop(self, spec: DesktopSpec) -> GraphicsEndpoint:
        dtype = self.domain_type(spec.image)
        conn = self._connection()
        pool = self._pool()
        with self._errors(f"create desktop {spec.name}"):
            vol_name = f"{spec.name}.qcow2"
            vol = self._volume(pool, vol_name)
            if vol is None:
                _refresh(pool)  # on shared storage, another host may have made it
                vol = self._volume(pool, vol_name)
            if vol is None and spec.disk_must_exist:
                raise HypervisorError(
                    f"host {self.uri}: desktop {spec.name}: its disk {vol_name} is missing "
                    "(deleted or on storage this host does not see); not making a blank one")
            if vol is not None and not spec.linked_clone and not self._defined(conn, spec.name):
                # the domain is defined only once its copy is complete: without it, this
                # may be a copy cut short by a crash
                vol.delete(0)
                vol = None
            if vol is None and spec.linked_clone:
                vol = pool.createXML(
                    f"<volume><name>{_x(vol_name)}</name>"
                    f"<capacity unit='bytes'>{spec.image.disk_bytes}</capacity>"
                    "<target><format type='qcow2'/></target>"
                    f"<backingStore><path>{_x(spec.image.disk_path)}</path>"
                    "<format type='qcow2'/></backingStore></volume>", 0)
            elif vol is None:  # a full copy: the image's blocks copied into a new volume
                image_vol = conn.storageVolLookupByPath(spec.image.disk_path)
                vol = pool.createXMLFrom(
                    f"<volume><name>{_x(vol_name)}</name>"
                    f"<capacity unit='bytes'>{spec.image.disk_bytes}</capacity>"
                    "<target><format type='qcow2'/></target></volume>", image_vol, 0)
            try:
                dom = conn.lookupByName(spec.name)
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                # The initial password is random and never stored: the console is unusable
                # until the broker sets a per-connection one.
                xml = self._domain_xml(spec.name, dtype, spec.desktop_id, spec.pool_id,
                                       spec.vcpus, spec.memory_mib, spec.image, vol.path(),
                                       self.log_dir / f"{spec.name}.serial.log",
                                       new_vnc_password())
                dom = conn.defineXML(xml)
            if not dom.isActive():
                dom.create()
        return self.graphics_endpoint(spec.name)

    @staticmethod
    def _defined(conn: Any, name: str) -> bool:
        try:
            conn.lookupByName(name)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            raise
        return True

    def _lookup(self, name: str) -> Any:
        conn = self._connection()
        with self._errors(f"look up {name}"):
            return conn.lookupByName(name)

    def graphics_endpoint(self, name: str) -> GraphicsEndpoint:
        dom = self._lookup(name)
        with self._errors(f"graphics of {name}"):
            if not dom.isActive():
                raise HypervisorError(f"desktop {name} is not running")
            root = parse_xml(dom.XMLDesc(0))
        g = root.find("./devices/graphics[@type='vnc']")
        if g is None or int(g.get("port", "-1")) <= 0:
            raise HypervisorError(f"desktop {name} has no VNC console")
        host = g.get("listen") or self.graphics_listen
        return GraphicsEndpoint(host=host, port=int(g.get("port", "0")))

    def shut_down_desktop(self, name: str, grace_s: float) -> None:
        dom = self._lookup(name)
        with self._errors(f"shut down {name}"):
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
        with self._errors(f"suspend {name}"):
            if dom.isActive():
                dom.managedSave(0)

    def set_console_password(self, name: str, password: str, valid_s: int) -> None:
        if not password or len(password) > 8:
            raise ValueError("a VNC password must have 1 to 8 characters")
        dom = self._lookup(name)
        with self._errors(f"set console password of {name}"):
            root = parse_xml(dom.XMLDesc(0))
            g = root.find("./devices/graphics[@type='vnc']")
            if g is None:
                raise HypervisorError(f"desktop {name} has no VNC console")
            until = (datetime.now(UTC) + timedelta(seconds=valid_s)).strftime("%Y-%m-%dT%H:%M:%S")
            g.set("passwd", password)
            g.set("passwdValidTo", until)
            g.set("connected", "keep")
            # The XML holds the password: it goes to libvirt only, never to a log.
            dom.updateDeviceFlags(ET.tostring(g, encoding="unicode"),
                                  libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def host_info(self) -> HostInfo:
        conn = self._connection()
        with self._errors("host info"):
            info = conn.getInfo()  # [model, memory MiB, cpus, MHz, nodes, sockets, ...]
            return HostInfo(hostname=conn.getHostname(), memory_mib=int(info[1]),
                            cpus=int(info[2]))

    def migrate_desktop(self, name: str, dest_uri: str, dest_listen: str) -> None:
        dom = self._lookup(name)
        with self._errors(f"migrate {name} to {dest_uri}"):
            root = parse_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE
                                         | libvirt.VIR_DOMAIN_XML_SECURE))
            for g in root.findall("./devices/graphics"):
                g.set("listen", dest_listen)  # this host's address does not exist there
                for listen in g.findall("listen"):
                    listen.set("address", dest_listen)
            params = {libvirt.VIR_MIGRATE_PARAM_DEST_XML: ET.tostring(root, encoding="unicode")}
            # UNSAFE: libvirt calls a disk "unsafe" unless it knows the file system as a
            # cluster one; the hosts share the folder the disks live in (the operator's
            # promise when a host is added with shared storage).
            flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
                     | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
                     | libvirt.VIR_MIGRATE_UNSAFE)
            dom.migrateToURI3(dest_uri, params, flags)

    def destroy_desktop(self, name: str, keep_disk: bool = False) -> None:
        conn = self._connection()
        pool = self._pool()
        with self._errors(f"destroy desktop {name}"):
            try:
                dom = conn.lookupByName(name)
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                dom = None
            if dom is not None:
                if dom.isActive():
                    _ignore_gone(dom.destroy)
                # with its saved memory, if it was suspended: an undefine without the
                # flag is refused, and a copy left defined would later resume old memory
                # over a newer disk
                _ignore_gone(lambda: dom.undefineFlags(
                    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE))
            if not keep_disk:
                _refresh(pool)  # on shared storage another host may have made it
                vol = self._volume(pool, f"{name}.qcow2")
                if vol is not None:
                    vol.delete(0)
        if self._is_local():
            (self.log_dir / f"{name}.serial.log").unlink(missing_ok=True)

    def list_desktops(self) -> list[DomainInfo]:
        conn = self._connection()
        out: list[DomainInfo] = []
        with self._errors("list domains"):
            for dom in conn.listAllDomains(0):
                try:
                    meta = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, 0)
                except libvirt.libvirtError as e:
                    if e.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN_METADATA,
                                              libvirt.VIR_ERR_NO_DOMAIN):
                        continue  # not one of ours, or gone since the listing
                    raise  # a failed query is not "the desktop is gone"
                el = parse_xml(meta)
                try:
                    running = bool(dom.isActive())
                except libvirt.libvirtError as e:
                    if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                        raise
                    continue  # undefined since listAllDomains: not an error of the listing
                out.append(DomainInfo(name=dom.name(), desktop_id=el.get("id", ""),
                                      pool_id=el.get("pool", ""), running=running))
        return out

    def serial_log_path(self, name: str) -> str:
        return str(self.log_dir / f"{name}.serial.log")


def _ignore_gone(fn: Callable[[], T]) -> None:
    try:
        fn()
    except libvirt.libvirtError as e:
        if e.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
            raise


def _refresh(pool: Any, bound_s: float = 10) -> None:
    """pool.refresh(0), waiting while the daemon builds a volume in that pool: libvirt
    refuses a refresh meanwhile ("pool '...' has asynchronous jobs running"), which
    happens whenever two desktops are made on one host at once (seen on the namespace
    hosts: a clone being created while another create or a destroy refreshes)."""
    deadline = time.monotonic() + bound_s
    while True:
        try:
            pool.refresh(0)
            return
        except libvirt.libvirtError as e:
            if ("asynchronous jobs" not in str(e.get_error_message() or "")
                    or time.monotonic() > deadline):
                raise
        time.sleep(0.1)


def _is_transport_error(e: Any) -> bool:
    """The connection to the host failed, not the operation. A system error (an errno)
    counts only from the RPC layer: the storage and QEMU drivers report a missing file
    the same way, and that is no outage (retrying it forever would hide it). The RPC
    layer reports a keepalive timeout or a daemon gone mid-call as an internal error."""
    if e.get_error_code() in (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_INTERNAL_ERROR):
        return e.get_error_domain() in (libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE)
    return e.get_error_code() in _CONNECTION_ERRORS


def _msg(e: Any) -> str:
    return str(e.get_error_message() or e).strip()


def _x(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def adapter_for(host: Host, settings: Settings) -> LibvirtHost:
    """The adapter for a registered host; the settings fill what the record leaves blank."""
    extra = {"log_dir": Path(host.log_dir)} if host.log_dir else {}
    return LibvirtHost(host.uri, storage_pool=host.storage_pool or settings.storage_pool,
                       storage_dir=Path(host.storage_dir or settings.storage_dir),
                       domain_type=settings.domain_type,
                       graphics_listen=host.graphics_listen or settings.graphics_listen,
                       cache_dir=Path(settings.state_dir) / "hosts", **extra)
