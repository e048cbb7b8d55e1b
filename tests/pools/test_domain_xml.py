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
    build_domain_xml,
    console_listen,
    console_password_device,
    desktop_metadata,
    with_graphics_listen,
)
from vdi.domain import ConsoleKind

BASE = DomainSpec(
    name="vdi-window-0001", domain_type="kvm", desktop_id="d-0001", pool_id="window",
    vcpus=2, memory_mib=2048, kernel_path="/var/lib/vdi/storage/img-v1-vmlinuz",
    initrd_path="/var/lib/vdi/storage/img-v1-initrd.img",
    cmdline="console=tty0 console=ttyS0 quiet no_timer_check",
    disk_path="/var/lib/vdi/storage/vdi-window-0001.qcow2",
    serial_log_path="/var/log/libvirt/qemu/vdi-window-0001.serial.log",
    console=ConsoleKind.VNC, listen="127.0.0.1", console_password="Ab3dEf9h")

HOSTILE = replace(
    BASE,
    name="evil <&> 'desk' \"x\"", desktop_id='x" pool="stolen', pool_id="</vdi:desktop><inject/>",
    kernel_path="/img/a b&c<d>.vmlinuz", initrd_path="/img/]]>'initrd'",
    cmdline='console=ttyS0 x="</cmdline><inject/>" & more',
    disk_path="/var/lib/x/'\"; rm -rf /.qcow2", serial_log_path="/l/<serial>&\"'.log",
    console_password='p"w<&>\'')

# Every element a document may hold: anything else was injected through a value.
TAGS = {"domain", "name", "metadata", f"{{{METADATA_NS}}}desktop", "memory", "vcpu", "os",
        "type", "kernel", "initrd", "cmdline", "on_poweroff", "on_reboot", "on_crash",
        "devices", "disk", "driver", "source", "target", "serial", "graphics", "video",
        "model", "channel", "memballoon"}


@dataclass(frozen=True)
class Case:
    label: str
    spec: DomainSpec
    facts: dict[str, Any]


VNC_DEVICES = ("disk", "serial", "graphics", "video", "memballoon")
SPICE_DEVICES = ("disk", "serial", "graphics", "channel", "video", "memballoon")
CASES = [
    Case("vnc-kvm-with-disk", BASE, {
        "type": "kvm", "name": "vdi-window-0001", "metadata": ("d-0001", "window"),
        "memory": ("2048", "MiB"), "vcpu": "2", "os": ("hvm", "x86_64", "pc"),
        "kernel": "/var/lib/vdi/storage/img-v1-vmlinuz",
        "initrd": "/var/lib/vdi/storage/img-v1-initrd.img",
        "cmdline": "console=tty0 console=ttyS0 quiet no_timer_check",
        "lifecycle": ("destroy", "restart", "destroy"),
        "devices": VNC_DEVICES,
        "disk": ("/var/lib/vdi/storage/vdi-window-0001.qcow2", "qemu", "qcow2", "vda",
                 "virtio"),
        "serial": ("/var/log/libvirt/qemu/vdi-window-0001.serial.log", "on", "0"),
        "graphics": [{"type": "vnc", "autoport": "yes", "listen": "127.0.0.1",
                      "passwd": "Ab3dEf9h"}],
        "channels": [], "video": ["vga"], "memballoon": "none"}),
    Case("vnc-tcg-probe-without-disk",
         replace(BASE, name="vdi-probe-kvm-a1b2c3", domain_type="qemu", desktop_id="probe",
                 pool_id="probe", vcpus=1, memory_mib=128, disk_path=None,
                 serial_log_path="/var/log/libvirt/qemu/vdi-probe-kvm-a1b2c3.serial.log"), {
        "type": "qemu", "name": "vdi-probe-kvm-a1b2c3", "metadata": ("probe", "probe"),
        "memory": ("128", "MiB"), "vcpu": "1", "os": ("hvm", "x86_64", "pc"),
        "kernel": "/var/lib/vdi/storage/img-v1-vmlinuz",
        "initrd": "/var/lib/vdi/storage/img-v1-initrd.img",
        "cmdline": "console=tty0 console=ttyS0 quiet no_timer_check",
        "lifecycle": ("destroy", "restart", "destroy"),
        "devices": ("serial", "graphics", "video", "memballoon"), "disk": None,
        "serial": ("/var/log/libvirt/qemu/vdi-probe-kvm-a1b2c3.serial.log", "on", "0"),
        "graphics": [{"type": "vnc", "autoport": "yes", "listen": "127.0.0.1",
                      "passwd": "Ab3dEf9h"}],
        "channels": [], "video": ["vga"], "memballoon": "none"}),
    Case("spice-on-a-host-address",
         replace(BASE, console=ConsoleKind.SPICE, listen="192.0.2.17",
                 console_password="a-longer-spice-ticket"), {
        "type": "kvm", "name": "vdi-window-0001", "metadata": ("d-0001", "window"),
        "memory": ("2048", "MiB"), "vcpu": "2", "os": ("hvm", "x86_64", "pc"),
        "kernel": "/var/lib/vdi/storage/img-v1-vmlinuz",
        "initrd": "/var/lib/vdi/storage/img-v1-initrd.img",
        "cmdline": "console=tty0 console=ttyS0 quiet no_timer_check",
        "lifecycle": ("destroy", "restart", "destroy"),
        "devices": SPICE_DEVICES,
        "disk": ("/var/lib/vdi/storage/vdi-window-0001.qcow2", "qemu", "qcow2", "vda",
                 "virtio"),
        "serial": ("/var/log/libvirt/qemu/vdi-window-0001.serial.log", "on", "0"),
        "graphics": [{"type": "spice", "autoport": "yes", "listen": "192.0.2.17",
                      "passwd": "a-longer-spice-ticket"}],
        "channels": [("spicevmc", "virtio", "com.redhat.spice.0")], "video": ["qxl"],
        "memballoon": "none"}),
    Case("hostile-values-vnc", HOSTILE, {
        "type": "kvm", "name": "evil <&> 'desk' \"x\"",
        "metadata": ('x" pool="stolen', "</vdi:desktop><inject/>"),
        "memory": ("2048", "MiB"), "vcpu": "2", "os": ("hvm", "x86_64", "pc"),
        "kernel": "/img/a b&c<d>.vmlinuz", "initrd": "/img/]]>'initrd'",
        "cmdline": 'console=ttyS0 x="</cmdline><inject/>" & more',
        "lifecycle": ("destroy", "restart", "destroy"),
        "devices": VNC_DEVICES,
        "disk": ("/var/lib/x/'\"; rm -rf /.qcow2", "qemu", "qcow2", "vda", "virtio"),
        "serial": ("/l/<serial>&\"'.log", "on", "0"),
        "graphics": [{"type": "vnc", "autoport": "yes", "listen": "127.0.0.1",
                      "passwd": 'p"w<&>\''}],
        "channels": [], "video": ["vga"], "memballoon": "none"}),
    Case("hostile-values-spice-unicode",
         replace(HOSTILE, name="东街-窗口-01 <&>", console=ConsoleKind.SPICE,
                 listen="::1"), {
        "type": "kvm", "name": "东街-窗口-01 <&>",
        "metadata": ('x" pool="stolen', "</vdi:desktop><inject/>"),
        "memory": ("2048", "MiB"), "vcpu": "2", "os": ("hvm", "x86_64", "pc"),
        "kernel": "/img/a b&c<d>.vmlinuz", "initrd": "/img/]]>'initrd'",
        "cmdline": 'console=ttyS0 x="</cmdline><inject/>" & more',
        "lifecycle": ("destroy", "restart", "destroy"),
        "devices": SPICE_DEVICES,
        "disk": ("/var/lib/x/'\"; rm -rf /.qcow2", "qemu", "qcow2", "vda", "virtio"),
        "serial": ("/l/<serial>&\"'.log", "on", "0"),
        "graphics": [{"type": "spice", "autoport": "yes", "listen": "::1",
                      "passwd": 'p"w<&>\''}],
        "channels": [("spicevmc", "virtio", "com.redhat.spice.0")], "video": ["qxl"],
        "memballoon": "none"}),
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
    os_type = _one(root, "./os/type")
    disks = root.findall("./devices/disk")
    disk = None
    if disks:
        (d,) = disks
        disk = (_one(d, "source").get("file"), _one(d, "driver").get("name"),
                _one(d, "driver").get("type"), _one(d, "target").get("dev"),
                _one(d, "target").get("bus"))
    serial = _one(root, "./devices/serial[@type='file']")
    return {
        "type": root.get("type"), "name": _one(root, "./name").text,
        "metadata": (meta.get("id"), meta.get("pool")),
        "memory": (memory.text, memory.get("unit")), "vcpu": _one(root, "./vcpu").text,
        "os": (os_type.text, os_type.get("arch"), os_type.get("machine")),
        "kernel": _one(root, "./os/kernel").text, "initrd": _one(root, "./os/initrd").text,
        "cmdline": _one(root, "./os/cmdline").text,
        "lifecycle": tuple(_one(root, f"./{e}").text
                           for e in ("on_poweroff", "on_reboot", "on_crash")),
        "devices": tuple(child.tag for child in _one(root, "./devices")),
        "disk": disk,
        "serial": (_one(serial, "source").get("path"), _one(serial, "source").get("append"),
                   _one(serial, "target").get("port")),
        "graphics": [dict(g.attrib) for g in root.findall("./devices/graphics")],
        "channels": [(c.get("type"), _one(c, "target").get("type"),
                      _one(c, "target").get("name"))
                     for c in root.findall("./devices/channel")],
        "video": [_one(v, "model").get("type") for v in root.findall("./devices/video")],
        "memballoon": _one(root, "./devices/memballoon").get("model"),
    }


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_document_shows_the_spec(case: Case) -> None:
    xml = build_domain_xml(case.spec)
    assert facts(xml) == case.facts
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
    replace(BASE, name="line\x00break"), replace(BASE, cmdline="console=ttyS0\x1b[2J"),
    replace(BASE, listen="127.0.0.1\x07"), replace(BASE, domain_type="xen"),
    replace(BASE, domain_type="auto"), replace(BASE, vcpus=0), replace(BASE, memory_mib=0),
], ids=["nul-in-name", "escape-in-cmdline", "bell-in-listen", "xen", "auto", "no-vcpu",
        "no-memory"])
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
