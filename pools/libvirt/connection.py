"""Connections to one libvirt host, and libvirt's errors as the project's own.

`HostConnection` keeps one connection per calling thread (opened on first use, again
after a failure; with keepalive for remote hosts) and translates libvirt errors into
`pools.hypervisor` exceptions: the transport failing is `HostUnavailable`, a missing
domain `DomainNotFound`, anything else `HypervisorError`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import libvirt

from pools.hypervisor import DomainNotFound, HostUnavailable, HypervisorError

# libvirt prints every error to stderr unless a handler is registered.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
# Remote hosts: probe every KEEPALIVE_S, give up after KEEPALIVE_COUNT missed answers, so
# a call to a host whose network is gone fails in ~20 s instead of TCP's minutes.
KEEPALIVE_S = 5
KEEPALIVE_COUNT = 3
_event_loop_lock = threading.Lock()
_event_loop_started = False

_CONNECTION_ERRORS = {
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
    libvirt.VIR_ERR_AUTH_FAILED,
    libvirt.VIR_ERR_AUTH_UNAVAILABLE,
}


def ensure_event_loop() -> None:
    """libvirt's keepalive and its domain events (a guest agent connecting) need its
    event loop running in this process (once); it must run before the connections that
    use them are opened, and keep running."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


class HostConnection:
    """The connections of this process to the host at `uri`: one per calling thread."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._local = threading.local()
        # every thread's connection, so close() can close them all
        self._conns: set[Any] = set()
        self._generation = 0  # close() starts a new one: older thread connections are void
        self._lock = threading.Lock()

    @property
    def is_local(self) -> bool:
        """The host is this machine (its files, e.g. serial logs, can be read here)."""
        return self.uri.startswith(("qemu:///", "qemu+unix:///"))

    def get(self) -> Any:
        """This thread's connection to the host, opened on first use and again after it
        failed. Raises HostUnavailable when the host does not answer.

        Never shared between threads: with libvirt 9.0, two threads calling through one
        keepalive connection to a host whose link is cut crash the process (SIGSEGV in
        the client's RPC event loop; one thread per connection does not), seen with
        tests/pools/test_multihost.py's cut-network test."""
        held = getattr(self._local, "held", None)
        if held is not None:
            generation, conn = held
            if generation == self._generation:
                with contextlib.suppress(libvirt.libvirtError):
                    if conn.isAlive():
                        return conn
            self.drop()
        remote = not self.is_local
        ensure_event_loop()  # before the open: events reach only connections opened after
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as e:
            raise HostUnavailable(f"host {self.uri} does not answer: {error_message(e)}") from e
        with self._lock:
            self._conns.add(conn)
            self._local.held = (self._generation, conn)
        if remote:
            try:
                conn.setKeepAlive(KEEPALIVE_S, KEEPALIVE_COUNT)
            except libvirt.libvirtError as e:
                self.drop()
                raise HostUnavailable(
                    f"host {self.uri} does not answer: {error_message(e)}") from e
        return conn

    def drop(self) -> None:
        """Forget (and close) this thread's connection: it failed or is not alive."""
        held = getattr(self._local, "held", None)
        self._local.held = None
        if held is None:
            return
        with self._lock:
            if held[1] not in self._conns:
                return  # close() closed it already
            self._conns.discard(held[1])
        with contextlib.suppress(libvirt.libvirtError):
            held[1].close()

    def close(self) -> None:
        """Close every thread's connection; each thread opens a new one on its next call."""
        with self._lock:
            conns, self._conns = self._conns, set()
            self._generation += 1
        for conn in conns:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    @contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Translate libvirt errors raised inside into `pools.hypervisor` ones, naming the
        host and `what` was being done; drop this thread's connection when it is the
        transport failing."""
        try:
            yield
        except libvirt.libvirtError as e:
            if is_transport_error(e):
                self.drop()
                raise HostUnavailable(f"host {self.uri}: {what}: {error_message(e)}") from e
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise DomainNotFound(f"host {self.uri}: {what}: no such domain") from e
            raise HypervisorError(f"host {self.uri}: {what}: {error_message(e)}") from e


def is_transport_error(e: Any) -> bool:
    """The connection to the host failed, not the operation. A system error (an errno)
    counts only from the RPC layer: the storage and QEMU drivers report a missing file
    the same way, and that is no outage (retrying it forever would hide it). The RPC
    layer reports a keepalive timeout or a daemon gone mid-call as an internal error."""
    if e.get_error_code() in (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_INTERNAL_ERROR):
        return e.get_error_domain() in (libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE)
    return e.get_error_code() in _CONNECTION_ERRORS


def error_message(e: Any) -> str:
    """The message of a libvirt error, without libvirt's decoration."""
    return str(e.get_error_message() or e).strip()
