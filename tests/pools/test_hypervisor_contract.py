"""The Hypervisor contract, run against FakeHypervisor and a real libvirtd.

The same cases run on both, so the fake the fast tests use behaves like the real host.
What only a real host can show (the guest boots, the disk is a linked clone, VNC auth
with the password the broker set) is proven on the real one, below the contract cases.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from defusedxml.ElementTree import fromstring as parse_xml

from broker.rfb import RfbAuthFailed, ServerHandshake
from pools.fake_hypervisor import FakeHypervisor
from pools.hypervisor import (
    DesktopSpec,
    DomainNotFound,
    HostUnavailable,
    Hypervisor,
    HypervisorError,
    ImageDisk,
    ImageFiles,
)
from pools.libvirt.domain_xml import DomainSpec, build_domain_xml, console_listen
from pools.libvirt.host import LibvirtHost
from pools.libvirt.profiles import profile_for
from tests.conftest import (
    LIBVIRT_LOG_DIR,
    LIBVIRT_URI,
    TEST_STORAGE_DIR,
    TEST_STORAGE_POOL,
    DomainNames,
    wait_for_serial,
)
from vdi.domain import ConsoleEndpoint, ConsoleKind, Firmware, ImageTraits, OsFamily

BOOT_BOUND_S = 120  # liveness bound for a TCG guest that boots in ~10 s; not a speed test
UNREACHABLE_URI = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"


@dataclass
class Subject:
    """One hypervisor under test, with an image published on it."""

    host: Hypervisor
    image_id: str
    image: ImageFiles
    names: DomainNames
    fake: FakeHypervisor | None = None
    created: list[str] = field(default_factory=list)

    @property
    def real(self) -> bool:
        return self.fake is None

    def spec(self, label: str = "c", image: ImageFiles | None = None) -> DesktopSpec:
        name = self.names.new(label)
        self.created.append(name)
        return DesktopSpec(name=name, desktop_id=f"desk-{name[-12:]}", pool_id="contract",
                           vcpus=1, memory_mib=256, image=image or self.image)

    def stop(self, name: str) -> None:
        """Power a desktop off behind the broker's back (as a guest shutting down would)."""
        if self.fake is not None:
            self.fake.stop(name)
        else:
            virsh("destroy", name)


def virsh(*args: str) -> str:
    result = subprocess.run(["virsh", "-q", "-c", LIBVIRT_URI, *args], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, f"virsh {' '.join(args)}: {result.stderr}"
    return result.stdout


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.real)])
def subject(request: pytest.FixtureRequest, guest_image: ImageDisk,
            domain_names: DomainNames) -> Iterator[Subject]:
    if request.param == "fake":
        fake = FakeHypervisor()
        subj = Subject(host=fake, image_id="img", image=fake.publish_image("img", 1, guest_image),
                       names=domain_names, fake=fake)
    else:
        host: LibvirtHost = request.getfixturevalue("libvirt_host")
        image: ImageFiles = request.getfixturevalue("libvirt_image")
        subj = Subject(host=host, image_id=f"{domain_names.prefix}img", image=image,
                       names=domain_names)
    yield subj
    # each test's desktops go at its end, so guests do not pile up during the session
    for name in subj.created:
        subj.host.destroy_desktop(name)


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.real)])
def down_host(request: pytest.FixtureRequest) -> Hypervisor:
    """A host that does not answer: the fake switched off, or a socket nobody listens on."""
    if request.param == "fake":
        fake = FakeHypervisor()
        fake.down = True
        return fake
    return LibvirtHost(UNREACHABLE_URI, storage_pool=TEST_STORAGE_POOL,
                       storage_dir=TEST_STORAGE_DIR, domain_type="qemu")


def vnc_authenticate(endpoint: ConsoleEndpoint, password: str) -> None:
    """Run the broker's RFB client handshake against the console until it is done.
    Raises RfbAuthFailed when the server rejects the password."""
    handshake = ServerHandshake(password, allow_none=False)
    with socket.create_connection((endpoint.host, endpoint.port), timeout=10) as sock:
        while not handshake.done:
            data = sock.recv(4096)
            if not data:
                raise ConnectionError("VNC server closed the connection during the handshake")
            reply = handshake.receive(data)
            if reply:
                sock.sendall(reply)


# --- contract: fake and real ---------------------------------------------------------


def test_publish_image_is_idempotent_per_version(subject: Subject, guest_image: ImageDisk) -> None:
    again = subject.host.publish_image(subject.image_id, 1, guest_image)
    assert again == subject.image
    v2 = subject.host.publish_image(subject.image_id, 2, guest_image)
    assert v2.disk_path != subject.image.disk_path
    assert subject.host.publish_image(subject.image_id, 2, guest_image) == v2
    # the virtual size of the built golden disk (74 MiB), not its file size
    assert v2.disk_bytes == subject.image.disk_bytes == 74 * 1024 * 1024
    assert v2.traits == guest_image.traits


def test_publish_image_needs_the_file(subject: Subject, guest_image: ImageDisk,
                                      tmp_path: Path) -> None:
    gone = replace(guest_image, path=tmp_path / "gone.qcow2")
    with pytest.raises((HypervisorError, FileNotFoundError)) as err:
        subject.host.publish_image(subject.image_id, 3, gone)
    assert not isinstance(err.value, HostUnavailable)


def test_create_desktop_gives_a_loopback_console_port(subject: Subject) -> None:
    endpoint = subject.host.create_desktop(subject.spec())
    assert endpoint.host == "127.0.0.1"
    assert endpoint.port >= 5900


def test_create_desktop_again_reuses_the_domain(subject: Subject) -> None:
    spec = subject.spec()
    first = subject.host.create_desktop(spec)
    domain_id = virsh("domid", spec.name).strip() if subject.real else ""
    second = subject.host.create_desktop(spec)
    assert second == first
    mine = [d for d in subject.host.list_desktops() if d.desktop_id == spec.desktop_id]
    assert [d.name for d in mine] == [spec.name]
    assert spec.name in subject.host.list_domain_names()  # every domain, ours among them
    if subject.fake is not None:
        assert subject.fake.defined_count == 1
    else:  # the same running domain, not a restarted or redefined one
        assert virsh("domid", spec.name).strip() == domain_id


def test_create_desktop_starts_a_stopped_desktop(subject: Subject) -> None:
    spec = subject.spec()
    subject.host.create_desktop(spec)
    subject.stop(spec.name)
    with pytest.raises(HypervisorError, match="not running") as err:
        subject.host.console_endpoint(spec.name)
    assert not isinstance(err.value, DomainNotFound)
    endpoint = subject.host.create_desktop(spec)
    assert subject.host.console_endpoint(spec.name) == endpoint
    assert [d.running for d in subject.host.list_desktops() if d.name == spec.name] == [True]


def test_a_desktop_whose_disk_must_exist_is_never_made_blank(subject: Subject) -> None:
    spec = replace(subject.spec(), disk_must_exist=True)
    with pytest.raises(HypervisorError, match="missing") as err:
        subject.host.create_desktop(spec)  # no disk yet: nothing is made
    assert not isinstance(err.value, HostUnavailable)
    assert spec.name not in {d.name for d in subject.host.list_desktops()}
    assert spec.name not in subject.host.list_domain_names()
    subject.host.create_desktop(replace(spec, disk_must_exist=False))
    subject.host.destroy_desktop(spec.name, keep_disk=True)
    subject.host.create_desktop(spec)  # its kept disk: started again
    assert [d.running for d in subject.host.list_desktops() if d.name == spec.name] == [True]
    subject.host.destroy_desktop(spec.name)  # the disk goes too
    with pytest.raises(HypervisorError, match="missing"):
        subject.host.create_desktop(spec)


def test_two_desktops_get_distinct_ports(subject: Subject) -> None:
    a = subject.host.create_desktop(subject.spec())
    b = subject.host.create_desktop(subject.spec())
    assert a.port != b.port


def test_create_desktop_with_an_unpublished_image_fails(subject: Subject) -> None:
    missing = replace(subject.image, disk_path=str(
        Path(subject.image.disk_path).with_name(f"{subject.names.prefix}never-published.qcow2")))
    spec = subject.spec(image=missing)
    with pytest.raises(HypervisorError) as err:
        subject.host.create_desktop(spec)
    assert not isinstance(err.value, HostUnavailable)  # the host answered: this is no outage
    assert spec.name not in [d.name for d in subject.host.list_desktops()]


def test_list_desktops_shows_metadata(subject: Subject) -> None:
    spec = subject.spec()
    subject.host.create_desktop(spec)
    mine = [d for d in subject.host.list_desktops() if d.name == spec.name]
    assert len(mine) == 1
    assert (mine[0].desktop_id, mine[0].pool_id, mine[0].running) == (
        spec.desktop_id, "contract", True)


def test_graphics_endpoint_matches_create(subject: Subject) -> None:
    spec = subject.spec()
    endpoint = subject.host.create_desktop(spec)
    assert subject.host.console_endpoint(spec.name) == endpoint


def test_set_console_password_opens_the_console(subject: Subject) -> None:
    spec = subject.spec()
    endpoint = subject.host.create_desktop(spec)
    subject.host.set_console_password(spec.name, "Pw8chars", 60)
    if subject.fake is not None:
        assert subject.fake.passwords[spec.name] == "Pw8chars"
        assert subject.fake.password_valid_s[spec.name] == 60
        return
    vnc_authenticate(endpoint, "Pw8chars")  # the broker's own RFB client gets through
    with pytest.raises(RfbAuthFailed):
        vnc_authenticate(endpoint, "wrong-pw")
    # a new password replaces the old one
    subject.host.set_console_password(spec.name, "n3w", 60)
    vnc_authenticate(endpoint, "n3w")
    with pytest.raises(RfbAuthFailed):
        vnc_authenticate(endpoint, "Pw8chars")


@pytest.mark.parametrize("password", ["", "nine-char"])
def test_console_password_vnc_cannot_carry_is_refused(subject: Subject, password: str) -> None:
    spec = subject.spec()
    subject.host.create_desktop(spec)
    with pytest.raises(ValueError, match="1 to 8 characters"):
        subject.host.set_console_password(spec.name, password, 60)


def test_destroy_is_idempotent_and_removes_the_desktop(subject: Subject) -> None:
    spec = subject.spec()
    keep = subject.spec()
    subject.host.create_desktop(spec)
    subject.host.create_desktop(keep)
    subject.host.destroy_desktop(spec.name)
    subject.host.destroy_desktop(spec.name)
    names = [d.name for d in subject.host.list_desktops()]
    assert spec.name not in names
    assert keep.name in names
    with pytest.raises(DomainNotFound):
        subject.host.console_endpoint(spec.name)
    with pytest.raises(DomainNotFound):
        subject.host.set_console_password(spec.name, "abc", 60)


def test_shut_down_and_suspended_desktops_start_again_and_can_be_removed(
        subject: Subject) -> None:
    """The idle policy's power actions on a dedicated desktop: off (the guest ignores the
    power button: forced off after the grace) or suspended (memory saved to disk); a
    create starts it again; a removal also removes a suspended one's saved memory."""
    off, saved = subject.spec(), subject.spec()
    subject.host.create_desktop(off)
    subject.host.create_desktop(saved)
    subject.host.shut_down_desktop(off.name, grace_s=2)
    subject.host.suspend_desktop(saved.name)
    running = {d.name: d.running for d in subject.host.list_desktops()}
    assert (running[off.name], running[saved.name]) == (False, False)
    if subject.real:
        assert "yes" in virsh("dominfo", saved.name).split("Managed save:")[1][:10]
    subject.host.create_desktop(off)
    assert {d.name: d.running for d in subject.host.list_desktops()}[off.name]
    subject.host.destroy_desktop(saved.name)  # refused by libvirt without removing the save
    assert saved.name not in [d.name for d in subject.host.list_desktops()]


def test_destroy_of_an_unknown_name_is_a_no_op(subject: Subject) -> None:
    before = subject.host.list_desktops()
    subject.host.destroy_desktop(subject.names.new("never"))
    assert subject.host.list_desktops() == before


CALLS: dict[str, Callable[[Hypervisor, str], Any]] = {
    "graphics_endpoint": lambda h, name: h.console_endpoint(name),
    "set_console_password": lambda h, name: h.set_console_password(name, "abc", 60),
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_unknown_domain_raises_domain_not_found(subject: Subject, call: str) -> None:
    with pytest.raises(DomainNotFound):
        CALLS[call](subject.host, subject.names.new("unknown"))


def test_serial_log_path_names_the_desktop(subject: Subject) -> None:
    spec = subject.spec()
    subject.host.create_desktop(spec)
    path = Path(subject.host.serial_log_path(spec.name))
    assert path.name == f"{spec.name}.serial.log"


DOWN_CALLS: dict[str, Callable[[Hypervisor, ImageDisk], Any]] = {
    "publish_image": lambda h, img: h.publish_image("img", 1, img),
    "create_desktop": lambda h, img: h.create_desktop(DesktopSpec(
        name="vdit-down", desktop_id="down", pool_id="p", vcpus=1, memory_mib=128,
        image=ImageFiles("/x.qcow2", 1, ImageTraits(Firmware.BIOS, OsFamily.LINUX)))),
    "wait_until_up": lambda h, img: h.wait_until_up("vdit-down", img.traits, 5),
    "reset_desktop": lambda h, img: h.reset_desktop("vdit-down"),
    "graphics_endpoint": lambda h, img: h.console_endpoint("vdit-down"),
    "set_console_password": lambda h, img: h.set_console_password("vdit-down", "abc", 60),
    "destroy_desktop": lambda h, img: h.destroy_desktop("vdit-down"),
    "list_desktops": lambda h, img: h.list_desktops(),
}


@pytest.mark.parametrize("call", sorted(DOWN_CALLS))
def test_a_host_that_does_not_answer_raises_host_unavailable(
        down_host: Hypervisor, guest_image: ImageDisk, call: str) -> None:
    with pytest.raises(HostUnavailable):
        DOWN_CALLS[call](down_host, guest_image)


# --- real only -------------------------------------------------------------------------


def domain_xml(name: str, *extra: str) -> Any:
    return parse_xml(virsh("dumpxml", name, *extra))


@pytest.fixture
def real(request: pytest.FixtureRequest, guest_image: ImageDisk,
         domain_names: DomainNames) -> Iterator[Subject]:
    host: LibvirtHost = request.getfixturevalue("libvirt_host")
    image: ImageFiles = request.getfixturevalue("libvirt_image")
    subj = Subject(host=host, image_id=f"{domain_names.prefix}img", image=image,
                   names=domain_names)
    yield subj
    for name in subj.created:
        subj.host.destroy_desktop(name)


@pytest.mark.real
def test_desktop_disk_is_a_linked_clone_of_the_image(real: Subject) -> None:
    spec = real.spec()
    real.host.create_desktop(spec)
    disks = domain_xml(spec.name).findall("./devices/disk[@device='disk']/source")
    assert len(disks) == 1
    overlay = disks[0].get("file")
    assert overlay and Path(overlay).parent == TEST_STORAGE_DIR
    info = json.loads(subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", overlay], capture_output=True, text=True,
        timeout=30, check=True).stdout)
    assert info["format"] == "qcow2"
    assert info["backing-filename"] == real.image.disk_path
    assert info["virtual-size"] == real.image.disk_bytes
    # the clone holds only its own changes: far smaller than the image it is backed by
    assert info["actual-size"] < Path(real.image.disk_path).stat().st_size


@pytest.mark.real
def test_guest_boots_with_its_disk(real: Subject) -> None:
    spec = real.spec()
    real.host.create_desktop(spec)
    log = wait_for_serial(Path(real.host.serial_log_path(spec.name)), b"VDI-READY",
                          BOOT_BOUND_S)
    assert b"VDI-DISK-OK" in log  # init mounted the linked clone's ext4 filesystem


@pytest.mark.real
def test_domain_xml_listens_on_loopback_and_hides_the_password(real: Subject) -> None:
    spec = real.spec()
    real.host.create_desktop(spec)
    real.host.set_console_password(spec.name, "Hid3Me!", 60)
    raw = virsh("dumpxml", spec.name)  # virDomainGetXMLDesc(flags=0), i.e. XMLDesc(0)
    graphics = parse_xml(raw).findall("./devices/graphics")
    assert [g.get("type") for g in graphics] == ["vnc"]
    vnc = graphics[0]
    assert vnc.get("listen") == "127.0.0.1"
    assert [li.get("address") for li in vnc.findall("listen")] == ["127.0.0.1"]
    assert vnc.get("passwd") is None
    assert "Hid3Me!" not in raw
    # ... while the password is really set (libvirt shows it only with --security-info)
    secure = domain_xml(spec.name, "--security-info").find("./devices/graphics")
    assert secure is not None and secure.get("passwd") == "Hid3Me!"


@pytest.mark.real
def test_auto_domain_type_picks_one_that_boots(libvirt_image: ImageFiles,
                                               domain_names: DomainNames) -> None:
    """Detection may take ~20 s here: the KVM probe guest hangs until its bound."""
    host = LibvirtHost(LIBVIRT_URI, storage_pool=TEST_STORAGE_POOL,
                       storage_dir=TEST_STORAGE_DIR, domain_type="auto", log_dir=LIBVIRT_LOG_DIR)
    name = domain_names.new("auto")
    spec = DesktopSpec(name=name, desktop_id="auto", pool_id="contract", vcpus=1,
                       memory_mib=128, image=libvirt_image)
    try:
        host.create_desktop(spec)
        dtype = host.domain_type(libvirt_image)
        assert dtype in ("kvm", "qemu")
        assert domain_xml(name).get("type") == dtype
        wait_for_serial(Path(host.serial_log_path(name)), b"VDI-READY", BOOT_BOUND_S)
    finally:
        host.destroy_desktop(name)
        host.close()


@pytest.mark.real
def test_spice_document_boots_with_a_password_protected_console(
        libvirt_image: ImageFiles, domain_names: DomainNames, tmp_path: Path) -> None:
    """The SPICE branch of the domain-XML builder, which no host adapter uses yet, is
    accepted and started by the real libvirtd and QEMU."""
    name = domain_names.new("spice")
    serial = LIBVIRT_LOG_DIR / f"{name}.serial.log"
    overlay = TEST_STORAGE_DIR / f"{name}.qcow2"  # removed with the session's volumes
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    libvirt_image.disk_path, str(overlay)], check=True)
    spec = DomainSpec(name=name, domain_type="qemu", desktop_id="spice", pool_id="contract",
                      vcpus=1, memory_mib=256, disk_path=str(overlay),
                      profile=profile_for(libvirt_image.traits, ConsoleKind.SPICE, "qemu"),
                      serial_log_path=str(serial), console=ConsoleKind.SPICE,
                      listen="127.0.0.1", console_password="spice-ticket-1")
    path = tmp_path / "spice.xml"
    path.write_text(build_domain_xml(spec), encoding="utf-8")
    virsh("create", str(path))
    try:
        wait_for_serial(serial, b"VDI-READY", BOOT_BOUND_S)
        raw = virsh("dumpxml", name)
        listen = console_listen(raw, ConsoleKind.SPICE)
        assert listen is not None and listen[0] == "127.0.0.1"
        with socket.create_connection(listen, timeout=10):
            pass  # the SPICE server listens where the document asked
        root = parse_xml(raw)
        assert sorted(str(c.get("type")) for c in root.findall("./devices/channel")) == [
            "spicevmc", "unix"]  # the SPICE agent's and the guest agent's
        assert [m.get("type") for m in root.findall("./devices/video/model")] == ["qxl"]
        assert "spice-ticket-1" not in raw
        secure = domain_xml(name, "--security-info").find("./devices/graphics")
        assert secure is not None and secure.get("passwd") == "spice-ticket-1"
    finally:
        virsh("destroy", name)
