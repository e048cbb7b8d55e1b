"""Departments' networks without libvirt: the document the broker defines on each host
(validated with virt-xml-validate), the refusals, and the store that keeps departments
from sharing addresses."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from defusedxml.ElementTree import fromstring as parse_xml
from sqlalchemy.orm import Session, sessionmaker

from pools.hypervisor import NetworkSpec
from pools.libvirt.network_xml import build_network_xml
from pools.networks import NetworkError, NetworkStore


@pytest.mark.parametrize("spec, forward, gateway, netmask, dhcp", [
    (NetworkSpec("depta", "10.231.1.0/24"), None, "10.231.1.1", "255.255.255.0",
     ("10.231.1.10", "10.231.1.253")),
    (NetworkSpec("records", "172.20.0.0/16", "nat"), "nat", "172.20.0.1", "255.255.0.0",
     ("172.20.0.10", "172.20.255.253")),
    (NetworkSpec("tiny", "192.168.50.0/28"), None, "192.168.50.1", "255.255.255.240",
     ("192.168.50.10", "192.168.50.13")),
], ids=["isolated-24", "nat-16", "isolated-28"])
def test_network_document(spec: NetworkSpec, forward: str | None, gateway: str, netmask: str,
                          dhcp: tuple[str, str], tmp_path: Path) -> None:
    xml = build_network_xml(spec)
    root = parse_xml(xml)
    assert root.findtext("name") == f"vdi-{spec.name}"
    fwd = root.find("forward")
    assert (fwd.get("mode") if fwd is not None else None) == forward
    bridge, ip, rng = root.find("bridge"), root.find("ip"), root.find("ip/dhcp/range")
    assert bridge is not None and ip is not None and rng is not None, xml
    assert bridge.get("name") == f"vdi-{spec.name}"
    assert (ip.get("address"), ip.get("netmask")) == (gateway, netmask)
    assert (rng.get("start"), rng.get("end")) == dhcp
    path = tmp_path / "network.xml"
    path.write_text(xml)
    done = subprocess.run(["virt-xml-validate", str(path), "network"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("spec, why", [
    (NetworkSpec("Dept A", "10.231.1.0/24"), "network name"),
    (NetworkSpec("a-name-too-long", "10.231.1.0/24"), "network name"),
    (NetworkSpec("depta", "8.8.8.0/24"), "not a private range"),
    (NetworkSpec("depta", "10.231.1.5/24"), "host bits set"),
    (NetworkSpec("depta", "10.0.0.0/8"), "a /16 to /28"),
    (NetworkSpec("depta", "10.231.1.0/24", "bridged"), "mode"),
], ids=["space", "long", "public", "host-bits", "too-big", "mode"])
def test_bad_networks_are_refused(spec: NetworkSpec, why: str,
                                  db: sessionmaker[Session]) -> None:
    with pytest.raises(ValueError, match=why):
        build_network_xml(spec)
    with pytest.raises(NetworkError, match=why):
        NetworkStore(db).save(spec)


def test_departments_may_not_share_addresses(db: sessionmaker[Session]) -> None:
    store = NetworkStore(db)
    assert store.save(NetworkSpec("depta", "10.231.1.0/24")) is True
    with pytest.raises(NetworkError, match="overlaps network depta"):
        store.save(NetworkSpec("deptb", "10.231.0.0/16"))
    assert store.save(NetworkSpec("deptb", "10.231.2.0/24")) is True
    assert store.save(NetworkSpec("depta", "10.231.1.0/24")) is False  # as it is
    with pytest.raises(NetworkError, match="give the new one another name"):
        store.save(NetworkSpec("depta", "10.231.3.0/24", "nat"))
    assert [(n.name, n.subnet, n.mode) for n in store.all()] == [
        ("depta", "10.231.1.0/24", "isolated"), ("deptb", "10.231.2.0/24", "isolated")]
