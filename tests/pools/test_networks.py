"""Departments' networks on a real libvirt host: guests get addresses on their pool's
network (the agent tells them), and a guest of department A cannot reach a guest of
department B, while it reaches its own department's (checked from inside the guests,
`guest-exec` of ping through the agent).

The host is a namespace host (tests/nshost.py): the broker defines the isolated networks
there, and all guest traffic stays inside that namespace."""

from __future__ import annotations

import base64
import ipaddress
import time
from collections.abc import Iterator

import pytest

from pools.hypervisor import DesktopSpec, HypervisorError, ImageDisk, NetworkSpec
from pools.libvirt.host import LibvirtHost
from pools.seed import desktop_hostname
from tests.nshost import NamespaceHost, lone_host

pytestmark = pytest.mark.real

PREFIX = "vdit-net-"
LOCK_WAIT_S = 300
BOOT_BOUND_S = 240  # three TCG guests booting at once on 2 cores; not a speed test
DEPT_A = NetworkSpec("depta", "10.231.1.0/24")
DEPT_B = NetworkSpec("deptb", "10.231.2.0/24")


@pytest.fixture(scope="module")
def host() -> Iterator[tuple[NamespaceHost, LibvirtHost]]:
    with lone_host(PREFIX + "pool", lock_wait_s=LOCK_WAIT_S) as (h, adapter):
        yield h, adapter


def run_in(adapter: LibvirtHost, name: str, *argv: str, bound_s: float = 30) -> int:
    """Run a program in the guest through its agent; its exit code."""
    started = adapter.agent(name, "guest-exec",
                            {"path": argv[0], "arg": list(argv[1:]), "capture-output": True})
    deadline = time.monotonic() + bound_s
    while True:
        status = adapter.agent(name, "guest-exec-status",
                               {"pid": started["pid"]})
        if status.get("exited"):
            out = base64.b64decode(status.get("out-data", "")).decode(errors="replace")
            print(f"{name}: {' '.join(argv)} -> {status.get('exitcode')}\n{out}")
            return int(status.get("exitcode", -1))
        assert time.monotonic() < deadline, f"{argv} did not end in the guest"
        time.sleep(0.5)


def address_in(adapter: LibvirtHost, name: str, network: NetworkSpec) -> str:
    """The guest's address on `network`, once its DHCP client got one."""
    subnet = ipaddress.IPv4Network(network.subnet)
    deadline = time.monotonic() + 60
    while True:
        for a in adapter.guest_addresses(name):
            if ":" not in a and ipaddress.IPv4Address(a) in subnet:
                return a
        assert time.monotonic() < deadline, (name, adapter.guest_addresses(name))
        time.sleep(1)


def test_departments_reach_their_own_and_not_each_other(
        host: tuple[NamespaceHost, LibvirtHost], guest_image: ImageDisk) -> None:
    _, adapter = host
    image = adapter.publish_image(PREFIX + "img", 1, guest_image)
    guests: dict[str, NetworkSpec] = {"a1": DEPT_A, "a2": DEPT_A, "b1": DEPT_B}
    specs = {label: DesktopSpec(
        name=f"{PREFIX}{label}", desktop_id=f"dept-{label}", pool_id="dept", vcpus=1,
        memory_mib=256, image=image, hostname=desktop_hostname(f"dept-{label}"),
        network=f"network:{net.name}", network_spec=net) for label, net in guests.items()}
    try:
        for spec in specs.values():
            adapter.create_desktop(spec)
        for spec in specs.values():
            adapter.wait_until_up(spec.name, image.traits, BOOT_BOUND_S)
        ip = {label: address_in(adapter, specs[label].name, net)
              for label, net in guests.items()}
        assert len(set(ip.values())) == 3
        a1 = specs["a1"].name
        ping = ("/bin/ping", "-c", "2", "-W", "2")
        assert run_in(adapter, a1, *ping, ip["a2"]) == 0  # its own department
        assert run_in(adapter, a1, *ping, ip["b1"]) != 0  # not the other one's
        assert run_in(adapter, specs["b1"].name, *ping, ip["a1"]) != 0
        # not even a guest that routes through the host on purpose (libvirt rejects
        # forwarding between its isolated networks)
        gateway_a = str(next(ipaddress.IPv4Network(DEPT_A.subnet).hosts()))
        assert run_in(adapter, a1, "/bin/ip", "route", "add", DEPT_B.subnet, "via",
                      gateway_a) == 0
        assert run_in(adapter, a1, *ping, gateway_a) == 0
        assert run_in(adapter, a1, *ping, ip["b1"]) != 0
        # the check can fail: b1 reaches its own network's gateway (the host's DHCP side)
        gateway = str(next(ipaddress.IPv4Network(DEPT_B.subnet).hosts()))
        assert run_in(adapter, specs["b1"].name, *ping, gateway) == 0
    finally:
        for spec in specs.values():
            try:
                adapter.destroy_desktop(spec.name)
            except HypervisorError as e:
                print(f"cleanup of {spec.name}: {e}")
