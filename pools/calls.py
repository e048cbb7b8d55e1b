"""Run blocking hypervisor calls off the event loop, each with a deadline."""

from __future__ import annotations

import asyncio
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
    hangs) on its own, and the event loop never waits for it.
    """

    def __init__(self, hosts: dict[str, Hypervisor], timeout_s: float,
                 max_threads: int = 16,
                 factory: Callable[[Host], Hypervisor] | None = None) -> None:
        self.hosts = hosts
        self.timeout_s = timeout_s
        self._factory = factory
        self._executor = ThreadPoolExecutor(max_threads, thread_name_prefix="libvirt")

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
                  timeout_s: float | None = None) -> T:
        host = self.host(uri)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, fn, host)
        try:
            return await asyncio.wait_for(future, timeout_s or self.timeout_s)
        except TimeoutError:
            raise HostUnavailable(f"host {uri} did not answer within "
                                  f"{timeout_s or self.timeout_s:.0f} s") from None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
