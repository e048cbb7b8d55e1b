"""The libvirt domain XML of a desktop, built and read without libvirt.

Pure functions of values: `build_domain_xml` turns a `DomainSpec` into the document
libvirt defines; the others read or rewrite documents libvirt returned. Every value is
placed by ElementTree (escaped as text or attribute), never spliced into a string, and a
value XML cannot carry at all (a control character) is refused with ValueError.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import assert_never
from xml.etree import ElementTree as ET

from defusedxml.ElementTree import fromstring as parse_xml

from pools.libvirt.profiles import DeviceProfile
from vdi.domain import Arch, ConsoleKind, Firmware

# The broker's mark on its domains: `list_desktops` knows a desktop by this element.
METADATA_NS = "urn:vdi-broker:desktop:1"
METADATA_PREFIX = "vdi"
DOMAIN_TYPES = ("kvm", "qemu")
# Characters XML 1.0 allows (https://www.w3.org/TR/xml/#charsets); ElementTree would write
# the others as they are, and libvirt would refuse the document.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class Nic:
    """The desktop's network card: QEMU user-mode networking (`user`, nothing on the
    host's interfaces), a libvirt network (`network`) or a host bridge (`bridge`)."""

    kind: str
    source: str  # the network's or bridge's name; "" for user
    mac: str


NIC_KINDS = ("user", "network", "bridge")
AGENT_CHANNEL = "org.qemu.guest_agent.0"


@dataclass(frozen=True)
class DomainSpec:
    """One domain as the broker defines it: the devices of its profile, booting its own
    qcow2 disk through firmware, its serial console in a file, its network card, an
    optional NoCloud seed (its identity) and one remote console of `console` kind
    listening on `listen`."""

    name: str
    domain_type: str  # one of DOMAIN_TYPES: "kvm", or "qemu" for TCG
    desktop_id: str
    pool_id: str
    vcpus: int
    memory_mib: int
    profile: DeviceProfile
    disk_path: str
    serial_log_path: str
    console: ConsoleKind
    listen: str
    # The console's initial password; it goes to libvirt only (who shows it only with
    # VIR_DOMAIN_XML_SECURE), so the console is closed until the broker sets its own.
    console_password: str
    nic: Nic | None = None
    seed_path: str | None = None  # a cloud-init `cidata` ISO, attached as a CD-ROM


def build_domain_xml(spec: DomainSpec) -> str:
    """The domain document for `spec`. Raises ValueError for a domain type other than
    kvm/qemu, a vcpu or memory count below 1, an unknown NIC kind, or a value with a
    character XML cannot hold."""
    _check(spec)
    p = spec.profile
    domain = ET.Element("domain", type=spec.domain_type)
    _child(domain, "name", spec.name)
    # Written as a literal prefix and xmlns attribute: ElementTree would name a namespace
    # it has not been told of globally "ns0"; libvirt keeps the prefix it is given.
    ET.SubElement(ET.SubElement(domain, "metadata"), f"{METADATA_PREFIX}:desktop",
                  {f"xmlns:{METADATA_PREFIX}": METADATA_NS, "id": spec.desktop_id,
                   "pool": spec.pool_id})
    _child(domain, "memory", str(spec.memory_mib), unit="MiB")
    _child(domain, "vcpu", str(spec.vcpus))
    _os(domain, p)
    _features(domain, p)
    if p.cpu_mode is not None:
        cpu = ET.SubElement(domain, "cpu", mode=p.cpu_mode)
        if p.cpu_model is not None:
            _child(cpu, "model", p.cpu_model)
    clock = ET.SubElement(domain, "clock", offset="localtime" if p.clock_localtime else "utc")
    if p.hyperv:
        ET.SubElement(clock, "timer", name="hypervclock", present="yes")
    _child(domain, "on_poweroff", "destroy")
    _child(domain, "on_reboot", "restart")
    _child(domain, "on_crash", "destroy")
    devices = ET.SubElement(domain, "devices")
    disk = ET.SubElement(devices, "disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="qcow2")
    ET.SubElement(disk, "source", file=spec.disk_path)
    ET.SubElement(disk, "target", dev="vda" if p.disk_bus == "virtio" else "sda",
                  bus=p.disk_bus)
    ET.SubElement(disk, "boot", order="1")
    if spec.seed_path is not None:
        seed = ET.SubElement(devices, "disk", type="file", device="cdrom")
        ET.SubElement(seed, "driver", name="qemu", type="raw")
        ET.SubElement(seed, "source", file=spec.seed_path)
        ET.SubElement(seed, "target", dev="sdb",
                      bus="sata" if p.arch is Arch.X86_64 else "scsi")
        ET.SubElement(seed, "readonly")
    if spec.nic is not None:
        nic = ET.SubElement(devices, "interface", type=spec.nic.kind)
        ET.SubElement(nic, "mac", address=spec.nic.mac)
        if spec.nic.kind != "user":
            ET.SubElement(nic, "source", {spec.nic.kind: spec.nic.source})
        ET.SubElement(nic, "model", type=p.nic_model)
    if p.usb_controller is not None:
        ET.SubElement(devices, "controller", type="usb", model=p.usb_controller)
    if p.disk_bus == "scsi" or (spec.seed_path is not None and p.arch is not Arch.X86_64):
        ET.SubElement(devices, "controller", type="scsi", model="virtio-scsi")
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=spec.serial_log_path, append="on")
    ET.SubElement(serial, "target", port="0")
    agent = ET.SubElement(devices, "channel", type="unix")
    ET.SubElement(agent, "target", type="virtio", name=AGENT_CHANNEL)
    ET.SubElement(devices, "input", type="tablet", bus="usb")
    if p.usb_keyboard:
        ET.SubElement(devices, "input", type="keyboard", bus="usb")
    _console(devices, spec)
    ET.SubElement(devices, "memballoon", model="none")
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode")


def _os(domain: ET.Element, p: DeviceProfile) -> None:
    uefi = p.firmware is Firmware.UEFI
    os_ = ET.SubElement(domain, "os", firmware="efi") if uefi else ET.SubElement(domain, "os")
    _child(os_, "type", "hvm", arch=p.arch.value, machine=p.machine)
    if uefi:
        # libvirt picks the firmware file (OVMF, AAVMF) from the descriptors the firmware
        # packages install, and makes the desktop's NVRAM file itself
        fw = ET.SubElement(os_, "firmware")
        ET.SubElement(fw, "feature", enabled="yes" if p.secure_boot else "no",
                      name="secure-boot")
        if p.secure_boot:
            ET.SubElement(fw, "feature", enabled="yes", name="enrolled-keys")


def _features(domain: ET.Element, p: DeviceProfile) -> None:
    features = ET.SubElement(domain, "features")
    if p.acpi:
        ET.SubElement(features, "acpi")  # UEFI needs it; the power button is ACPI
    if p.arch is Arch.X86_64:
        ET.SubElement(features, "apic")
    else:
        ET.SubElement(features, "gic", version="3")
    if p.hyperv:
        hv = ET.SubElement(features, "hyperv", mode="custom")
        ET.SubElement(hv, "relaxed", state="on")
        ET.SubElement(hv, "vapic", state="on")
        ET.SubElement(hv, "spinlocks", state="on", retries="8191")
    if p.secure_boot:
        ET.SubElement(features, "smm", state="on")  # q35 secure boot needs SMM


def _console(devices: ET.Element, spec: DomainSpec) -> None:
    """The graphics element of the console's kind, and the devices that kind needs."""
    if spec.console is ConsoleKind.VNC:
        ET.SubElement(devices, "graphics", type="vnc", autoport="yes", listen=spec.listen,
                      passwd=spec.console_password)
        ET.SubElement(ET.SubElement(devices, "video"), "model", type=spec.profile.video)
    elif spec.console is ConsoleKind.SPICE:
        # Password set as for VNC: a SPICE server without one lets anyone who reaches
        # the listen address in (the listen address is the host's own on multi-host).
        ET.SubElement(devices, "graphics", type="spice", autoport="yes", listen=spec.listen,
                      passwd=spec.console_password)
        # the agent channel (clipboard, resolution following the window); libvirt adds
        # the virtio-serial controller it sits on
        channel = ET.SubElement(devices, "channel", type="spicevmc")
        ET.SubElement(channel, "target", type="virtio", name="com.redhat.spice.0")
        # QXL on x86: the display device SPICE's own 2D commands are made for
        ET.SubElement(ET.SubElement(devices, "video"), "model", type=spec.profile.video)
    else:
        assert_never(spec.console)


def _check(spec: DomainSpec) -> None:
    if spec.domain_type not in DOMAIN_TYPES:
        raise ValueError(f"domain type must be one of {DOMAIN_TYPES}, not {spec.domain_type!r}")
    if spec.vcpus < 1 or spec.memory_mib < 1:
        raise ValueError(f"a domain needs at least 1 vcpu and 1 MiB "
                         f"(got {spec.vcpus}, {spec.memory_mib})")
    if spec.nic is not None and spec.nic.kind not in NIC_KINDS:
        raise ValueError(f"network card kind must be one of {NIC_KINDS}, not {spec.nic.kind!r}")
    texts = [spec.name, spec.desktop_id, spec.pool_id, spec.disk_path, spec.serial_log_path,
             spec.listen, spec.console_password, spec.seed_path or ""]
    if spec.nic is not None:
        texts += [spec.nic.source, spec.nic.mac]
    for text in texts:
        if _NOT_XML.search(text):
            raise ValueError(f"{text!r} holds a character XML cannot carry")


def _child(parent: ET.Element, tag: str, text: str, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    el.text = text
    return el


def desktop_metadata(metadata_xml: str) -> tuple[str, str]:
    """(desktop id, pool id) from the broker's metadata element as libvirt returns it
    (virDomainGetMetadata); "" for an attribute that is missing."""
    el = parse_xml(metadata_xml)
    return el.get("id", ""), el.get("pool", "")


def console_listen(domain_xml: str, kind: ConsoleKind) -> tuple[str, int] | None:
    """(listen address, port) of a running domain's console of `kind`; the address is ""
    when the document names none. None when there is no such console or it has no port
    (yet)."""
    g = parse_xml(domain_xml).find(f"./devices/graphics[@type='{kind.value}']")
    if g is None or int(g.get("port", "-1")) <= 0:
        return None
    return g.get("listen") or "", int(g.get("port", "0"))


def console_password_device(domain_xml: str, password: str,
                            valid_until: datetime) -> str | None:
    """The domain's VNC graphics device with `password` for new connections until
    `valid_until` (UTC) and open connections kept: the argument of
    virDomainUpdateDeviceFlags. None when the domain has no VNC console. The result holds
    the password: it goes to libvirt only, never to a log."""
    g = parse_xml(domain_xml).find("./devices/graphics[@type='vnc']")
    if g is None:
        return None
    g.set("passwd", password)
    g.set("passwdValidTo", valid_until.strftime("%Y-%m-%dT%H:%M:%S"))
    g.set("connected", "keep")
    return ET.tostring(g, encoding="unicode")


def with_graphics_listen(domain_xml: str, listen: str) -> str:
    """The domain document with every console listening on `listen`: the document a
    migration defines on the destination host, where this host's address does not exist."""
    root = parse_xml(domain_xml)
    for g in root.findall("./devices/graphics"):
        g.set("listen", listen)
        for child in g.findall("listen"):
            child.set("address", listen)
    return ET.tostring(root, encoding="unicode")
