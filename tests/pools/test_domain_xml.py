"""pools.libvirt.domain_xml without libvirt: a table of specs and the facts their
documents must show, each document validated against libvirt's own schema with
`virt-xml-validate` (libvirt-clients; xmllint from libxml2-utils), and the readers of
documents libvirt returns."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from defusedxml.ElementTree import fromstring as parse_xml

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
from pools.libvirt.profiles import profile_for
from vdi.domain import Arch, ConsoleKind, Firmware, ImageTraits, OsFamily

BIOS_LINUX = ImageTraits(Firmware.BIOS, OsFamily.LINUX)
UEFI_WINDOWS = ImageTraits(Firmware.UEFI, OsFamily.WINDOWS, secure_boot=True)
LEGACY_WINDOWS = ImageTraits(Firmware.BIOS, OsFamily.WINDOWS, virtio=False)
ARM = ImageTraits(Firmware.UEFI, OsFamily.LINUX, arch=Arch.AARCH64)
MAC = "52:aa:bb:cc:dd:ee"

BASE = DomainSpec(
    name="vdi-window-0001", domain_type="kvm", desktop_id="d-0001", pool_id="window",
    vcpus=2, memory_mib=2048, profile=profile_for(BIOS_LINUX, ConsoleKind.VNC, "kvm"),
    disk_path="/var/lib/vdi/storage/vdi-window-0001.qcow2",
    serial_log_path="/var/log/libvirt/qemu/vdi-window-0001.serial.log",
    console=ConsoleKind.VNC, listen="127.0.0.1", console_password="Ab3dEf9h",
    nic=Nic("user", "", MAC))

HOSTILE = replace(
    BASE,
    name="evil <&> 'desk' \"x\"", desktop_id='x" pool="stolen', pool_id="</vdi:desktop><inject/>",
    disk_path="/var/lib/x/'\"; rm -rf /.qcow2", serial_log_path="/l/<serial>&\"'.log",
    console_password='p"w<&>\'', seed_path="/s/<seed>&.iso",
    nic=Nic("network", "dept-a'\"<&>", MAC))

# Every element a document may hold: anything else was injected through a value.
TAGS = {"domain", "name", "metadata", f"{{{METADATA_NS}}}desktop", "memory", "vcpu", "os",
        "type", "firmware", "feature", "features", "acpi", "apic", "gic", "hyperv", "relaxed",
        "vapic", "spinlocks", "smm", "cpu", "clock", "timer", "on_poweroff",
        "on_reboot", "on_crash", "devices", "disk", "driver", "source", "target", "boot",
        "readonly", "interface", "mac", "serial", "graphics", "video", "model", "channel",
        "input", "controller", "memballoon"}


@dataclass(frozen=True)
class Case:
    label: str
    spec: DomainSpec
    facts: dict[str, Any]  # what the document must say (and every case: COMMON)


COMMON = {"lifecycle": ("destroy", "restart", "destroy"), "memballoon": "none"}
CASES = [
    Case("bios-linux-vnc-kvm", BASE, {
        "type": "kvm", "name": "vdi-window-0001", "metadata": ("d-0001", "window"),
        "memory": ("2048", "MiB"), "vcpu": "2", "os": ("hvm", "x86_64", "q35", None),
        "secure_boot": None, "features": ["acpi", "apic"], "cpu": ("host-model", None),
        "clock": ("utc", []),
        "disks": [("disk", "/var/lib/vdi/storage/vdi-window-0001.qcow2", "qcow2", "vda",
                   "virtio")],
        "nics": [("user", None, MAC, "virtio")],
        "serial": ("/var/log/libvirt/qemu/vdi-window-0001.serial.log", "on", "0"),
        "graphics": [{"type": "vnc", "autoport": "yes", "listen": "127.0.0.1",
                      "passwd": "Ab3dEf9h"}],
        "channels": [("unix", "virtio", "org.qemu.guest_agent.0")],
        "inputs": [("tablet", "usb")], "controllers": [], "video": ["vga"]}),
    Case("bios-linux-vnc-tcg-no-network",
         replace(BASE, domain_type="qemu", nic=None,
                 profile=profile_for(BIOS_LINUX, ConsoleKind.VNC, "qemu")), {
        "type": "qemu", "os": ("hvm", "x86_64", "q35", None), "cpu": None, "nics": [],
        "features": ["acpi", "apic"], "inputs": [("tablet", "usb")], "video": ["vga"]}),
    Case("uefi-windows-spice-kvm-secure-boot-with-seed",
         replace(BASE, console=ConsoleKind.SPICE, listen="192.0.2.17",
                 console_password="a-longer-spice-ticket", seed_path="/seeds/d-0001.iso",
                 nic=Nic("bridge", "br-vlan20", MAC),
                 profile=profile_for(UEFI_WINDOWS, ConsoleKind.SPICE, "kvm", secure_boot=True)), {
        "os": ("hvm", "x86_64", "q35", "efi"), "secure_boot": ("yes", "yes"),
        "features": ["acpi", "apic", "hyperv", "smm"], "cpu": ("host-model", None),
        "clock": ("localtime", [("hypervclock", "yes")]),
        "disks": [("disk", "/var/lib/vdi/storage/vdi-window-0001.qcow2", "qcow2", "vda",
                   "virtio"), ("cdrom", "/seeds/d-0001.iso", "raw", "sdb", "sata")],
        "nics": [("bridge", "br-vlan20", MAC, "virtio")],
        "graphics": [{"type": "spice", "autoport": "yes", "listen": "192.0.2.17",
                      "passwd": "a-longer-spice-ticket"}],
        "channels": [("unix", "virtio", "org.qemu.guest_agent.0"),
                     ("spicevmc", "virtio", "com.redhat.spice.0")], "video": ["qxl"]}),
    Case("bios-windows-without-virtio-tcg",
         replace(BASE, domain_type="qemu", nic=Nic("network", "dept-a", MAC),
                 profile=profile_for(LEGACY_WINDOWS, ConsoleKind.VNC, "qemu")), {
        "os": ("hvm", "x86_64", "q35", None), "features": ["acpi", "apic"], "cpu": None,
        "clock": ("localtime", []),
        "disks": [("disk", "/var/lib/vdi/storage/vdi-window-0001.qcow2", "qcow2", "sda",
                   "sata")],
        "nics": [("network", "dept-a", MAC, "e1000")], "video": ["vga"]}),
    Case("aarch64-linux-vnc-tcg",
         replace(BASE, domain_type="qemu", profile=profile_for(ARM, ConsoleKind.VNC, "qemu")), {
        "os": ("hvm", "aarch64", "virt", "efi"), "secure_boot": ("no", None),
        "features": ["acpi", "gic"], "cpu": ("custom", "cortex-a57"), "clock": ("utc", []),
        "nics": [("user", None, MAC, "virtio")],
        "inputs": [("tablet", "usb"), ("keyboard", "usb")],
        "controllers": [("usb", "qemu-xhci")], "video": ["virtio"]}),
    Case("hostile-values", HOSTILE, {
        "type": "kvm", "name": "evil <&> 'desk' \"x\"",
        "metadata": ('x" pool="stolen', "</vdi:desktop><inject/>"),
        "disks": [("disk", "/var/lib/x/'\"; rm -rf /.qcow2", "qcow2", "vda", "virtio"),
                  ("cdrom", "/s/<seed>&.iso", "raw", "sdb", "sata")],
        "nics": [("network", "dept-a'\"<&>", MAC, "virtio")],
        "serial": ("/l/<serial>&\"'.log", "on", "0"),
        "graphics": [{"type": "vnc", "autoport": "yes", "listen": "127.0.0.1",
                      "passwd": 'p"w<&>\''}]}),
    Case("hostile-values-spice-unicode",
         replace(HOSTILE, name="东街-窗口-01 <&>", console=ConsoleKind.SPICE, listen="::1",
                 profile=profile_for(BIOS_LINUX, ConsoleKind.SPICE, "kvm")), {
        "name": "东街-窗口-01 <&>",
        "graphics": [{"type": "spice", "autoport": "yes", "listen": "::1",
                      "passwd": 'p"w<&>\''}], "video": ["qxl"]}),
]


def _one(root: ET.Element, path: str) -> ET.Element:
    found = root.findall(path)
    assert len(found) == 1, f"{path}: {len(found)} elements"
    return found[0]


def facts(xml: str) -> dict[str, Any]:
    """What a document says, read back by a parser independent of the builder."""
    root = parse_xml(xml)
    meta = _one(root, f"./metadata/{{{METADATA_NS}}}desktop")
    memory = _one(root, "./memory")
    os_ = _one(root, "./os")
    os_type = _one(os_, "type")
    sb = os_.find("./firmware/feature[@name='secure-boot']")
    keys = os_.find("./firmware/feature[@name='enrolled-keys']")
    cpu = root.find("./cpu")
    clock = _one(root, "./clock")
    serial = _one(root, "./devices/serial[@type='file']")
    return {
        "type": root.get("type"), "name": _one(root, "./name").text,
        "metadata": (meta.get("id"), meta.get("pool")),
        "memory": (memory.text, memory.get("unit")), "vcpu": _one(root, "./vcpu").text,
        "os": (os_type.text, os_type.get("arch"), os_type.get("machine"), os_.get("firmware")),
        "secure_boot": None if sb is None else (
            sb.get("enabled"), None if keys is None else keys.get("enabled")),
        "features": [f.tag for f in _one(root, "./features")],
        "cpu": None if cpu is None else (
            cpu.get("mode"), None if cpu.find("model") is None else _one(cpu, "model").text),
        "clock": (clock.get("offset"),
                  [(t.get("name"), t.get("present")) for t in clock.findall("timer")]),
        "lifecycle": tuple(_one(root, f"./{e}").text
                           for e in ("on_poweroff", "on_reboot", "on_crash")),
        "disks": [(d.get("device"), _one(d, "source").get("file"),
                   _one(d, "driver").get("type"), _one(d, "target").get("dev"),
                   _one(d, "target").get("bus")) for d in root.findall("./devices/disk")],
        "nics": [(n.get("type"),
                  None if n.find("source") is None else next(iter(
                      _one(n, "source").attrib.values())),
                  _one(n, "mac").get("address"), _one(n, "model").get("type"))
                 for n in root.findall("./devices/interface")],
        "serial": (_one(serial, "source").get("path"), _one(serial, "source").get("append"),
                   _one(serial, "target").get("port")),
        "graphics": [dict(g.attrib) for g in root.findall("./devices/graphics")],
        "channels": [(c.get("type"), _one(c, "target").get("type"),
                      _one(c, "target").get("name"))
                     for c in root.findall("./devices/channel")],
        "inputs": [(i.get("type"), i.get("bus")) for i in root.findall("./devices/input")],
        "controllers": [(c.get("type"), c.get("model"))
                        for c in root.findall("./devices/controller")],
        "video": [_one(v, "model").get("type") for v in root.findall("./devices/video")],
        "memballoon": _one(root, "./devices/memballoon").get("model"),
    }


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_document_shows_the_spec(case: Case) -> None:
    xml = build_domain_xml(case.spec)
    seen = facts(xml)
    wanted = {**COMMON, **case.facts}
    assert {k: seen[k] for k in wanted} == wanted
    injected = {el.tag for el in parse_xml(xml).iter()} - TAGS
    assert not injected


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_document_is_valid_for_libvirt_schema(case: Case, tmp_path: Path) -> None:
    path = tmp_path / "domain.xml"
    path.write_text(build_domain_xml(case.spec), encoding="utf-8")
    result = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, (
        f"virt-xml-validate exit {result.returncode}:\n{result.stdout}{result.stderr}\n"
        f"{path.read_text(encoding='utf-8')}")


def test_validator_refuses_a_broken_document(tmp_path: Path) -> None:
    """The check above can fail: the schema is there and enforced."""
    xml = build_domain_xml(BASE).replace('type="vnc"', 'type="telnet"')
    path = tmp_path / "domain.xml"
    path.write_text(xml, encoding="utf-8")
    result = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "fails to validate" in result.stdout + result.stderr


@pytest.mark.parametrize("bad", [
    replace(BASE, name="line\x00break"), replace(BASE, disk_path="/d\x1b[2J.qcow2"),
    replace(BASE, listen="127.0.0.1\x07"), replace(BASE, domain_type="xen"),
    replace(BASE, domain_type="auto"), replace(BASE, vcpus=0), replace(BASE, memory_mib=0),
    replace(BASE, nic=Nic("direct", "eth0", MAC)), replace(BASE, nic=Nic("user", "", "\x00")),
], ids=["nul-in-name", "escape-in-disk", "bell-in-listen", "xen", "auto", "no-vcpu",
        "no-memory", "nic-kind", "nul-in-mac"])
def test_unbuildable_spec_is_refused(bad: DomainSpec) -> None:
    with pytest.raises(ValueError):
        build_domain_xml(bad)


# --- documents as a running domain's libvirt returns them ---------------------------------

RUNNING = """<domain type='qemu' id='7'>
  <name>vdi-window-0001</name>
  <metadata><vdi:desktop xmlns:vdi='urn:vdi-broker:desktop:1' id='d-0001' pool='window'/>
  </metadata>
  <devices>
    <graphics type='vnc' port='5903' autoport='yes' listen='127.0.0.1'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
    <graphics type='spice' port='5904' autoport='yes'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
    <video><model type='vga'/></video>
  </devices>
</domain>"""


def test_console_listen_per_kind() -> None:
    assert console_listen(RUNNING, ConsoleKind.VNC) == ("127.0.0.1", 5903)
    assert console_listen(RUNNING, ConsoleKind.SPICE) == ("", 5904)  # no listen attribute


def test_console_listen_none_before_a_port_or_without_the_kind() -> None:
    starting = RUNNING.replace("port='5903'", "port='-1'")
    assert console_listen(starting, ConsoleKind.VNC) is None
    vnc_only = build_domain_xml(BASE)  # defined, never started: no port
    assert console_listen(vnc_only, ConsoleKind.VNC) is None
    assert console_listen(vnc_only, ConsoleKind.SPICE) is None


def test_console_password_device_sets_password_expiry_and_keeps_clients() -> None:
    device = console_password_device(RUNNING, "n3wPass!", datetime(2026, 12, 7, 11, 0, 30,
                                                                   tzinfo=UTC))
    assert device is not None
    g = parse_xml(device)
    assert g.tag == "graphics" and g.get("type") == "vnc" and g.get("port") == "5903"
    assert (g.get("passwd"), g.get("passwdValidTo"), g.get("connected")) == (
        "n3wPass!", "2026-12-07T11:00:30", "keep")
    no_vnc = RUNNING.replace("type='vnc'", "type='rdp'")
    assert console_password_device(no_vnc, "x", datetime(2026, 1, 1, tzinfo=UTC)) is None


def test_migration_document_listens_on_the_destination_only() -> None:
    moved = parse_xml(with_graphics_listen(RUNNING, "192.0.2.9"))
    graphics = moved.findall("./devices/graphics")
    assert [g.get("listen") for g in graphics] == ["192.0.2.9", "192.0.2.9"]
    assert [li.get("address") for g in graphics for li in g.findall("listen")] == [
        "192.0.2.9", "192.0.2.9"]
    # the rest of the document is kept, the broker's metadata with its namespace
    meta = _one(moved, f"./metadata/{{{METADATA_NS}}}desktop")
    assert (meta.get("id"), meta.get("pool")) == ("d-0001", "window")
    assert _one(moved, "./name").text == "vdi-window-0001"


def test_desktop_metadata_reads_ids() -> None:
    assert desktop_metadata(
        "<vdi:desktop xmlns:vdi='urn:vdi-broker:desktop:1' id='d&amp;1' pool='p'/>") == (
        "d&1", "p")
    assert desktop_metadata("<vdi:desktop xmlns:vdi='urn:vdi-broker:desktop:1'/>") == ("", "")
