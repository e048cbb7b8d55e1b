"""The libvirt network a broker defines for a department, built without libvirt.

An isolated network (no `<forward>`): the guests on it reach each other and the host's
DHCP server, nothing else, and no other network's guests (libvirt rejects forwarding
between its networks). NAT (`<forward mode='nat'/>`) lets them out through the host, for
a district that wants that. Pure: ElementTree places every value."""

from __future__ import annotations

import ipaddress
import re
from xml.etree import ElementTree as ET

from pools.hypervisor import NetworkSpec

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,10}$")  # the bridge `vdi-<name>` fits 15 chars
MODES = ("isolated", "nat")


def check_network(spec: NetworkSpec) -> ipaddress.IPv4Network:
    """The subnet; raises ValueError saying what is wrong with the spec."""
    if not NAME.match(spec.name):
        raise ValueError("network name: 1-11 lower-case letters, digits or '-'")
    if spec.mode not in MODES:
        raise ValueError(f"network mode must be one of {', '.join(MODES)}")
    try:
        net = ipaddress.IPv4Network(spec.subnet, strict=True)
    except ValueError as e:
        raise ValueError(f"subnet {spec.subnet!r}: {e}") from e
    if not net.is_private:
        raise ValueError(f"subnet {net} is not a private range (RFC 1918)")
    if not 16 <= net.prefixlen <= 28:
        raise ValueError("subnet: a /16 to /28")
    return net


def build_network_xml(spec: NetworkSpec) -> str:
    """The network document: a bridge of its own, the subnet's first address on the host,
    DHCP for the rest (a few addresses kept at each end)."""
    net = check_network(spec)
    hosts = list(net.hosts())
    gateway, first, last = hosts[0], hosts[min(9, len(hosts) - 2)], hosts[-2]
    root = ET.Element("network")
    ET.SubElement(root, "name").text = spec.libvirt_name
    if spec.mode == "nat":
        ET.SubElement(root, "forward", mode="nat")
    ET.SubElement(root, "bridge", name=spec.bridge, stp="on", delay="0")
    ip = ET.SubElement(root, "ip", address=str(gateway), netmask=str(net.netmask))
    ET.SubElement(ET.SubElement(ip, "dhcp"), "range", start=str(first), end=str(last))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")
