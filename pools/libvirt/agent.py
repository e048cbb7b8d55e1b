"""The QEMU guest agent of a desktop, through libvirt: whether the guest is up, and the
commands the broker asks of it.

"Up" is the agent connecting: libvirt raises an agent-lifecycle event when the guest's
agent opens its channel, so the broker waits on that event instead of asking the guest
again and again; the channel's state in the live domain document covers an agent that
connected before the wait began. A ping then confirms it answers.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import threading
import time
from typing import Any

import libvirt
import libvirt_qemu
from defusedxml.ElementTree import fromstring as parse_xml

from pools.hypervisor import DomainNotFound, GuestNotUp, HypervisorError
from pools.libvirt.connection import HostConnection, error_message
from pools.libvirt.domain_xml import AGENT_CHANNEL

AGENT_COMMAND_TIMEOUT_S = 10
_CONNECTED = libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED
_RUNNING_CHECK_S = 2.0  # how often a wait checks the domain still runs


def agent_connected(domain_xml: str) -> bool:
    """The live document says the guest agent's channel is connected."""
    target = parse_xml(domain_xml).find(
        f"./devices/channel/target[@name='{AGENT_CHANNEL}']")
    return target is not None and target.get("state") == "connected"


def wait_for_agent(conn: HostConnection, name: str, timeout_s: float) -> None:
    """Block until the agent of running domain `name` connects and answers a ping.
    Raises GuestNotUp after timeout_s, DomainNotFound when the domain is gone or stops."""
    connected = threading.Event()

    def on_agent(_conn: Any, _dom: Any, state: int, _reason: int, _opaque: Any) -> None:
        if state == _CONNECTED:
            connected.set()

    deadline = time.monotonic() + timeout_s
    lv = conn.get()
    with conn.errors(f"wait for the agent of {name}"):
        dom = lv.lookupByName(name)
        callback = lv.domainEventRegisterAny(
            dom, libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE, on_agent, None)
    try:
        while True:
            with conn.errors(f"wait for the agent of {name}"):
                if not dom.isActive():
                    raise DomainNotFound(f"desktop {name} stopped while it booted")
                if connected.is_set() or agent_connected(dom.XMLDesc(0)):
                    if _pings(dom):
                        return
                    connected.clear()  # connected but not answering yet: wait again
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuestNotUp(f"desktop {name}: its guest agent did not answer within "
                                 f"{timeout_s:.0f} s of its start")
            connected.wait(min(left, _RUNNING_CHECK_S))
    finally:
        # the connection may have gone: its callbacks went with it
        with contextlib.suppress(libvirt.libvirtError):
            lv.domainEventDeregisterAny(callback)


def _pings(dom: Any) -> bool:
    try:
        libvirt_qemu.qemuAgentCommand(dom, '{"execute":"guest-ping"}', 5, 0)
    except libvirt.libvirtError:
        return False
    return True


def agent_command(conn: HostConnection, name: str, command: str,
                  arguments: dict[str, Any] | None = None) -> Any:
    """Run a guest agent command (e.g. 'guest-get-host-name') and return its 'return'
    value. Raises HypervisorError when the agent does not answer or refuses."""
    request: dict[str, Any] = {"execute": command}
    if arguments:
        request["arguments"] = arguments
    with conn.errors(f"agent of {name}"):
        dom = conn.get().lookupByName(name)
        try:
            answer = libvirt_qemu.qemuAgentCommand(dom, json.dumps(request),
                                                   AGENT_COMMAND_TIMEOUT_S, 0)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise
            raise HypervisorError(f"desktop {name}: the guest agent did not answer "
                                  f"{command}: {error_message(e)}") from e
    try:
        return json.loads(answer)["return"]
    except (ValueError, KeyError, TypeError) as e:
        raise HypervisorError(f"desktop {name}: the guest agent's answer to {command} "
                              "could not be read") from e


def addresses_of(interfaces: Any) -> list[str]:
    """The addresses worth showing an admin from an answer to
    guest-network-get-interfaces: IPv4 and global IPv6, not loopback or link-local."""
    out: list[str] = []
    if not isinstance(interfaces, list):
        return out
    for nic in interfaces:
        if not isinstance(nic, dict) or nic.get("name") == "lo":
            continue
        for a in nic.get("ip-addresses") or []:
            raw = a.get("ip-address") if isinstance(a, dict) else None
            try:  # the guest says what it likes: only real addresses are kept
                ip = ipaddress.ip_address(str(raw))
            except ValueError:
                continue
            if ip.is_loopback or ip.is_link_local or ip.is_unspecified:
                continue
            out.append(str(ip))
    return out[:8]
