"""Run blocking hypervisor calls off the event loop, each with a deadline."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

from pools.hypervisor import HostUnavailable, Hypervisor

if TYPE_CHECKING:
    from pools.hosts import Host

T = TypeVar("T")


class HostCalls:
    """The hosts the broker knows, and a bounded thread pool to call them in.

    A call that overruns its deadline raises HostUnavailable; its thread finishes (or
    hangs) on its own, and the event loop never waits for it. While such a call to a host
    still hangs, further calls to that host fail at once instead of tying up more threads:
    a host whose network is gone costs one thread, not the whole pool.
    """

    def __init__(self, hosts: dict[str, Hypervisor], timeout_s: float,
                 max_threads: int = 16, max_waits: int = 64,
                 factory: Callable[[Host], Hypervisor] | None = None) -> None:
        self.hosts = hosts
        self.timeout_s = timeout_s
        self._factory = factory
        self._executor = ThreadPoolExecutor(max_threads, thread_name_prefix="libvirt")
        # the host monitor's probes get threads of their own: hosts that hang must not
        # leave the probes of healthy ones queueing (they would be declared down too)
        self._probes = ThreadPoolExecutor(max_threads, thread_name_prefix="libvirt-probe")
        # waits for guests to come up last up to a boot timeout each: threads of their
        # own, so a morning's boots never leave the other calls queueing
        self._waits = ThreadPoolExecutor(max_waits, thread_name_prefix="libvirt-wait")
        self._overdue: dict[str, int] = {}  # calls past their deadline, still running
        self._lock = threading.Lock()

    def ensure(self, host: Host) -> None:
        """Make an adapter for a host registered in the database, once."""
        if host.uri not in self.hosts and self._factory is not None:
            self.hosts[host.uri] = self._factory(host)

    def host(self, uri: str) -> Hypervisor:
        try:
            return self.hosts[uri]
        except KeyError:
            raise HostUnavailable(f"host {uri} is not configured") from None

    async def run(self, uri: str, fn: Callable[[Hypervisor], T],
                  timeout_s: float | None = None, *, probe: bool = False,
                  wait: bool = False) -> T:
        """fn(host) in a thread, with a deadline. probe=True: the host monitor's question
        whether the host answers, on the probes' own threads; wait=True: a long wait
        (a guest coming up), on the waits' own threads."""
        host = self.host(uri)
        with self._lock:
            if self._overdue.get(uri):
                raise HostUnavailable(f"host {uri} has not answered an earlier call yet")
        pool = self._probes if probe else self._waits if wait else self._executor
        call = pool.submit(fn, host)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(call), timeout_s or self.timeout_s)
        except TimeoutError:
            if not call.done():
                with self._lock:
                    self._overdue[uri] = self._overdue.get(uri, 0) + 1
                call.add_done_callback(lambda _: self._answered(uri))
            raise HostUnavailable(f"host {uri} did not answer within "
                                  f"{timeout_s or self.timeout_s:.0f} s") from None

    def _answered(self, uri: str) -> None:
        with self._lock:
            self._overdue[uri] -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._probes.shutdown(wait=False, cancel_futures=True)
        self._waits.shutdown(wait=False, cancel_futures=True)
