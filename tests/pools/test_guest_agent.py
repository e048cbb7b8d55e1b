"""The guest side of a real desktop, through its QEMU guest agent on the real libvirtd:
the broker waits for the agent (ready means up), each clone of one image gets its own
hostname from its NoCloud seed, the seed keeps the name when the desktop is made again,
a desktop whose guest never comes up is reported, not waited for forever, and a guest
resumed from a suspend is given the host's time and tells its address."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from defusedxml.ElementTree import fromstring as parse_xml

from pools.hypervisor import DesktopSpec, GuestNotUp, ImageDisk, ImageFiles
from pools.libvirt.host import LibvirtHost
from pools.seed import desktop_hostname
from tests.conftest import DomainNames

pytestmark = pytest.mark.real
BOOT_BOUND_S = 180  # liveness bound for a TCG guest (~10 s here); not a speed test
SUSPENDED_S = 8


@pytest.fixture
def made(libvirt_host: LibvirtHost) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        libvirt_host.destroy_desktop(name)


def spec(names: DomainNames, image: ImageFiles, made: list[str], label: str) -> DesktopSpec:
    name = names.new(label)
    made.append(name)
    desktop_id = f"window-{name[-8:]}"
    return DesktopSpec(name=name, desktop_id=desktop_id, pool_id="window", vcpus=1,
                       memory_mib=256, image=image, hostname=desktop_hostname(desktop_id))


def test_two_clones_of_one_image_have_their_own_hostnames(
        libvirt_host: LibvirtHost, libvirt_image: ImageFiles, domain_names: DomainNames,
        made: list[str]) -> None:
    a, b = (spec(domain_names, libvirt_image, made, label) for label in ("ida", "idb"))
    for s in (a, b):
        libvirt_host.create_desktop(s)
    for s in (a, b):
        libvirt_host.wait_until_up(s.name, libvirt_image.traits, BOOT_BOUND_S)
    seen = {s.hostname: libvirt_host.agent(s.name, "guest-get-host-name")
            ["host-name"] for s in (a, b)}
    assert seen == {a.hostname: a.hostname, b.hostname: b.hostname}
    assert a.hostname != b.hostname
    # made again (a revert): the same name
    libvirt_host.destroy_desktop(a.name)
    libvirt_host.create_desktop(a)
    libvirt_host.wait_until_up(a.name, libvirt_image.traits, BOOT_BOUND_S)
    again = libvirt_host.agent(a.name, "guest-get-host-name")["host-name"]
    assert again == a.hostname


def test_a_guest_without_an_agent_is_not_up_within_the_timeout(
        libvirt_host: LibvirtHost, libvirt_image: ImageFiles, domain_names: DomainNames,
        made: list[str]) -> None:
    # the same guest, but its agent channel is never opened: a short timeout is hit
    s = spec(domain_names, libvirt_image, made, "noup")
    libvirt_host.create_desktop(s)
    with pytest.raises(GuestNotUp, match="did not answer within 1 s"):
        libvirt_host.wait_until_up(s.name, libvirt_image.traits, 1)
    # an image declared without an agent counts as up after its boot delay
    no_agent = replace(libvirt_image.traits, agent=False, boot_delay_s=2)
    libvirt_host.wait_until_up(s.name, no_agent, 30)
    with pytest.raises(GuestNotUp, match="boot delay"):
        libvirt_host.wait_until_up(s.name, replace(no_agent, boot_delay_s=60), 5)


def test_a_uefi_desktop_boots_and_goes_with_its_firmware_variables(
        libvirt_host: LibvirtHost, uefi_guest_image: ImageDisk, domain_names: DomainNames,
        made: list[str]) -> None:
    image = libvirt_host.publish_image(f"{domain_names.prefix}uefi", 1, uefi_guest_image)
    s = spec(domain_names, image, made, "uefi")
    libvirt_host.create_desktop(s)
    libvirt_host.wait_until_up(s.name, image.traits, BOOT_BOUND_S)
    live = subprocess.run(["virsh", "-c", "qemu:///system", "dumpxml", s.name],
                          capture_output=True, text=True, check=True).stdout
    nvram = parse_xml(live).find("./os/nvram")
    assert nvram is not None and nvram.text and Path(nvram.text).exists()
    libvirt_host.destroy_desktop(s.name)
    listed = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert s.name not in listed  # undefined, NVRAM and all
    assert not Path(nvram.text).exists()


def guest_clock_lag_s(host: LibvirtHost, name: str) -> float:
    """How far the guest's clock is behind the host's (seconds; negative: ahead)."""
    guest_ns = int(host.agent(name, "guest-get-time"))
    return time.time() - guest_ns / 1e9


def test_a_resumed_guest_is_given_the_time_and_tells_its_address(
        libvirt_host: LibvirtHost, libvirt_image: ImageFiles, domain_names: DomainNames,
        made: list[str]) -> None:
    # a user-mode network card: QEMU's own DHCP gives the guest 10.0.2.15
    s = replace(spec(domain_names, libvirt_image, made, "clock"), network="user")
    libvirt_host.create_desktop(s)
    libvirt_host.wait_until_up(s.name, libvirt_image.traits, BOOT_BOUND_S)
    deadline = time.monotonic() + 60
    while not (addresses := libvirt_host.guest_addresses(s.name)):
        assert time.monotonic() < deadline, "the guest reported no address within 60 s"
        time.sleep(1)
    assert "10.0.2.15" in addresses, addresses
    assert abs(guest_clock_lag_s(libvirt_host, s.name)) < 2  # it booted with the host's
    # suspended to disk (the idle policy's suspend), then resumed a while later: the
    # guest's clock resumes where it stopped
    libvirt_host.suspend_desktop(s.name)
    time.sleep(SUSPENDED_S)
    libvirt_host.create_desktop(s)
    libvirt_host.wait_until_up(s.name, libvirt_image.traits, BOOT_BOUND_S)
    behind = guest_clock_lag_s(libvirt_host, s.name)
    assert behind > SUSPENDED_S - 2, f"the guest's clock is only {behind:.1f} s behind"
    assert libvirt_host.sync_guest_clock(s.name)
    assert abs(guest_clock_lag_s(libvirt_host, s.name)) < 2
