"""One host's storage pool: the published image volumes and the desktops' disks.

Methods block and raise only `pools.hypervisor` errors (through `HostConnection.errors`).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import libvirt
from defusedxml.ElementTree import fromstring as parse_xml

from pools.hypervisor import DesktopSpec, HypervisorError, ImageDisk, ImageFiles
from pools.libvirt.connection import HostConnection


class HostStorage:
    """The storage pool `pool_name` (a folder, `pool_dir`) on the host of `connection`;
    made, started and set to autostart on first use if the host has none of that name."""

    def __init__(self, connection: HostConnection, pool_name: str, pool_dir: Path) -> None:
        self._conn = connection
        self.pool_name = pool_name
        self.pool_dir = pool_dir

    def pool(self) -> Any:
        """The running storage pool (a libvirt handle for this thread's connection)."""
        conn = self._conn.get()
        with self._conn.errors("storage pool"):
            try:
                pool = conn.storagePoolLookupByName(self.pool_name)
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                    raise
                pool = conn.storagePoolDefineXML(_pool_xml(self.pool_name, self.pool_dir), 0)
                pool.build(0)
                pool.setAutostart(1)
            if not pool.isActive():
                pool.create(0)
            return pool

    def publish_image(self, image_id: str, version: int, disk: ImageDisk,
                      progress: Callable[[int], None] | None = None) -> ImageFiles:
        """See `Hypervisor.publish_image`: the volume is named by image, version and
        content digest, and read back after the upload; a volume of that name whose
        content does not match (an upload cut short) is made again."""
        pool = self.pool()
        vol_name = f"{image_id}-v{version}-{disk.digest[:12]}.qcow2"
        where = f"host {self._conn.uri}"
        with self._conn.errors(f"publish image {image_id} v{version}"):
            refresh_pool(pool)
            vol = _volume(pool, vol_name)
            if vol is not None and self._digest(vol) != disk.digest:
                vol.delete(0)  # torn or altered: never used, made again
                vol = None
            if vol is None:
                size = disk.path.stat().st_size
                free = int(pool.info()[3])
                if size > free:
                    raise HypervisorError(
                        f"{where}: image {image_id} needs {_gib(size)} and storage pool "
                        f"{self.pool_name} has {_gib(free)} left")
                vol = self._upload(pool, vol_name, disk.path, progress)
                if self._digest(vol) != disk.digest:
                    vol.delete(0)
                    raise HypervisorError(f"{where}: the copy of image {image_id} there "
                                          "does not match the imported file")
            return ImageFiles(disk_path=str(vol.path()), disk_bytes=disk.disk_bytes,
                              traits=disk.traits)

    def _upload(self, pool: Any, vol_name: str, src: Path,
                progress: Callable[[int], None] | None) -> Any:
        """Send the file's bytes as they are into a new volume (a torn upload is found
        by the digest check that follows, and made again)."""
        size = src.stat().st_size
        vol = pool.createXML(_volume_xml(vol_name, size, "raw"), 0)
        stream = self._conn.get().newStream(0)
        vol.upload(stream, 0, size, 0)
        sent = 0
        try:
            with src.open("rb") as f:
                while chunk := f.read(1 << 20):
                    stream.send(chunk)
                    sent += len(chunk)
                    if progress is not None:
                        progress(sent)
            stream.finish()
        except BaseException:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
            with contextlib.suppress(libvirt.libvirtError):
                vol.delete(0)
            raise
        # libvirt knows the volume holds qcow2 only after probing the uploaded bytes
        refresh_pool(pool)
        vol = pool.storageVolLookupByName(vol_name)
        probed = parse_xml(vol.XMLDesc(0)).find("./target/format")
        if probed is None or probed.get("type") != "qcow2":
            vol.delete(0)
            raise HypervisorError(f"uploaded {src.name} is not a qcow2 file")
        return vol

    def _digest(self, vol: Any) -> str:
        """SHA-256 of the volume's bytes as the host stores them, read back through libvirt."""
        h = hashlib.sha256()
        stream = self._conn.get().newStream(0)
        vol.download(stream, 0, 0, 0)
        try:
            while True:
                chunk = stream.recv(1 << 20)
                if not chunk:
                    break
                if isinstance(chunk, int):  # -2: would block (not on a blocking stream)
                    continue
                h.update(chunk)
            stream.finish()
        except BaseException:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
            raise
        return h.hexdigest()

    def free_bytes(self) -> int:
        """The room left in the storage pool."""
        pool = self.pool()
        with self._conn.errors("storage pool room"):
            refresh_pool(pool)
            return int(pool.info()[3])

    def desktop_disk(self, spec: DesktopSpec, domain_defined: bool) -> str:
        """The path of the desktop's disk volume `<name>.qcow2`, made if missing: a linked
        clone (a qcow2 overlay on the image's disk) or a full copy of it. `domain_defined`:
        the desktop's domain exists, so a disk of a full copy found here is complete (the
        domain is defined only after its copy); without it the disk is copied again.
        Raises HypervisorError if the disk must exist (`spec.disk_must_exist`) and does not."""
        pool = self.pool()
        conn = self._conn.get()
        with self._conn.errors(f"create desktop {spec.name}"):
            vol_name = f"{spec.name}.qcow2"
            vol = _volume(pool, vol_name)
            if vol is None:
                refresh_pool(pool)  # on shared storage, another host may have made it
                vol = _volume(pool, vol_name)
            if vol is None and spec.disk_must_exist:
                raise HypervisorError(
                    f"host {self._conn.uri}: desktop {spec.name}: its disk {vol_name} is "
                    "missing (deleted or on storage this host does not see); not making a "
                    "blank one")
            if vol is not None and not spec.linked_clone and not domain_defined:
                # may be a copy cut short by a crash
                vol.delete(0)
                vol = None
            if vol is None and spec.linked_clone:
                vol = pool.createXML(_volume_xml(vol_name, spec.image.disk_bytes, "qcow2",
                                                 backing=spec.image.disk_path), 0)
            elif vol is None:  # a full copy: the image's blocks copied into a new volume
                image_vol = conn.storageVolLookupByPath(spec.image.disk_path)
                vol = pool.createXMLFrom(_volume_xml(vol_name, spec.image.disk_bytes, "qcow2"),
                                         image_vol, 0)
            return str(vol.path())

    def desktop_seed(self, name: str, data: bytes) -> str:
        """The path of the desktop's NoCloud seed volume `<name>-seed.iso`, written with
        `data` (made again when its content differs: a revert keeps the name)."""
        pool = self.pool()
        vol_name = f"{name}-seed.iso"
        with self._conn.errors(f"seed of desktop {name}"):
            vol = _volume(pool, vol_name)
            if vol is not None and int(vol.info()[1]) != len(data):
                vol.delete(0)
                vol = None
            if vol is None:
                vol = pool.createXML(_volume_xml(vol_name, len(data), "raw"), 0)
            stream = self._conn.get().newStream(0)
            vol.upload(stream, 0, len(data), 0)
            try:
                for start in range(0, len(data), 1 << 20):
                    stream.send(data[start:start + (1 << 20)])
                stream.finish()
            except BaseException:
                with contextlib.suppress(libvirt.libvirtError):
                    stream.abort()
                raise
            return str(vol.path())

    def delete_desktop_disk(self, name: str) -> None:
        """Delete the disk and seed volumes of desktop `name`. Idempotent."""
        pool = self.pool()
        with self._conn.errors(f"destroy desktop {name}"):
            refresh_pool(pool)  # on shared storage another host may have made it
            for vol_name in (f"{name}.qcow2", f"{name}-seed.iso"):
                vol = _volume(pool, vol_name)
                if vol is not None:
                    vol.delete(0)


def refresh_pool(pool: Any, bound_s: float = 10) -> None:
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


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def _volume(pool: Any, name: str) -> Any | None:
    try:
        return pool.storageVolLookupByName(name)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return None
        raise


def _pool_xml(name: str, folder: Path) -> str:
    pool = ET.Element("pool", type="dir")
    ET.SubElement(pool, "name").text = name
    ET.SubElement(ET.SubElement(pool, "target"), "path").text = str(folder)
    return ET.tostring(pool, encoding="unicode")


def _volume_xml(name: str, capacity: int, fmt: str, backing: str | None = None) -> str:
    """A volume of `capacity` bytes in format `fmt`; with `backing`, a qcow2 overlay on
    the qcow2 file at that path."""
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="bytes").text = str(int(capacity))
    ET.SubElement(ET.SubElement(vol, "target"), "format", type=fmt)
    if backing is not None:
        store = ET.SubElement(vol, "backingStore")
        ET.SubElement(store, "path").text = backing
        ET.SubElement(store, "format", type="qcow2")
    return ET.tostring(vol, encoding="unicode")
