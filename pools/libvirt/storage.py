"""One host's storage pool: the published image volumes and the desktops' disks.

Methods block and raise only `pools.hypervisor` errors (through `HostConnection.errors`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import libvirt
from defusedxml.ElementTree import fromstring as parse_xml

from pools.hypervisor import (
    IMAGE_FILES,
    DesktopSpec,
    HypervisorError,
    ImageFiles,
    image_cmdline,
    image_digest,
    qcow2_virtual_size,
)
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

    def publish_image(self, image_id: str, version: int, source_dir: Path) -> ImageFiles:
        """See `Hypervisor.publish_image`: the volumes are named by image, version and
        content digest; one whose disk does not show the image's size is made again."""
        pool = self.pool()
        paths: dict[str, str] = {}
        for fname in IMAGE_FILES:
            if not (source_dir / fname).is_file():
                raise HypervisorError(f"image file {source_dir / fname} is missing "
                                      "(build the image first)")
        digest = image_digest(source_dir)[:12]
        disk_bytes = qcow2_virtual_size(source_dir / "disk.qcow2")
        with self._conn.errors(f"publish image {image_id} v{version}"):
            refresh_pool(pool)
            for fname in IMAGE_FILES:
                src = source_dir / fname
                vol_name = f"{image_id}-v{version}-{digest}-{fname}"
                vol = _volume(pool, vol_name)
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
        part = _volume(pool, vol_name + ".part")
        if part is not None:
            part.delete(0)
        vol = pool.createXML(_volume_xml(vol_name + ".part", size, "raw"), 0)
        stream = self._conn.get().newStream(0)
        vol.upload(stream, 0, size, 0)
        with src.open("rb") as f:
            while chunk := f.read(1 << 20):
                stream.send(chunk)
        stream.finish()
        fmt = "qcow2" if vol_name.endswith(".qcow2") else "raw"
        # The copy below converts from the source volume's format, which libvirt knows
        # only after probing the uploaded bytes: without the refresh, a qcow2 file
        # uploaded into a 'raw' volume would be wrapped as the *contents* of a new disk.
        refresh_pool(pool)
        vol = pool.storageVolLookupByName(vol_name + ".part")
        probed = parse_xml(vol.XMLDesc(0)).find("./target/format")
        if probed is None or probed.get("type") != fmt:
            vol.delete(0)
            raise HypervisorError(f"uploaded {src.name} is not a {fmt} file")
        final = pool.createXMLFrom(_volume_xml(vol_name, size, fmt), vol, 0)
        vol.delete(0)
        return final

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

    def delete_desktop_disk(self, name: str) -> None:
        """Delete the disk volume of desktop `name`. Idempotent."""
        pool = self.pool()
        with self._conn.errors(f"destroy desktop {name}"):
            refresh_pool(pool)  # on shared storage another host may have made it
            vol = _volume(pool, f"{name}.qcow2")
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
