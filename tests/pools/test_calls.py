"""HostCalls: deadlines, and a hung host costs one thread, not the pool."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from pools.calls import HostCalls
from pools.fake_hypervisor import FakeHypervisor
from pools.hypervisor import HostUnavailable, Hypervisor


async def test_a_hung_host_fails_further_calls_at_once_until_it_answers() -> None:
    hung, fine = FakeHypervisor("fake://hung/system"), FakeHypervisor("fake://fine/system")
    calls = HostCalls({hung.uri: hung, fine.uri: fine}, timeout_s=0.2, max_threads=2)
    release = threading.Event()

    def stuck(h: Hypervisor) -> str:
        release.wait(10)
        return h.uri

    try:
        with pytest.raises(HostUnavailable, match="did not answer within"):
            await calls.run(hung.uri, stuck)
        started = time.monotonic()
        with pytest.raises(HostUnavailable, match="not answered an earlier call"):
            await calls.run(hung.uri, lambda h: h.host_info())
        assert time.monotonic() - started < 0.1  # at once, no thread taken
        # the other host still has a thread (the pool has two; one hangs)
        assert (await calls.run(fine.uri, lambda h: h.host_info())).hostname == fine.uri
        release.set()
        deadline = time.monotonic() + 5
        while True:
            try:
                info = await calls.run(hung.uri, lambda h: h.host_info())
                break
            except HostUnavailable:
                assert time.monotonic() < deadline, "the host stayed blocked after answering"
                await asyncio.sleep(0.05)
        assert info.hostname == hung.uri
    finally:
        release.set()
        calls.close()


async def test_probes_of_a_healthy_host_do_not_queue_behind_hung_calls() -> None:
    hung = [FakeHypervisor(f"fake://hung{i}/system") for i in range(2)]
    fine = FakeHypervisor("fake://fine2/system")
    calls = HostCalls({h.uri: h for h in (*hung, fine)}, timeout_s=0.2, max_threads=2)
    release = threading.Event()

    def stuck(h: Hypervisor) -> str:
        release.wait(10)
        return h.uri

    try:
        for h in hung:  # every job thread is taken by a host that hangs
            with pytest.raises(HostUnavailable):
                await calls.run(h.uri, stuck)
        info = await calls.run(fine.uri, lambda h: h.host_info(), timeout_s=1, probe=True)
        assert info.hostname == fine.uri  # the monitor still hears the healthy host
    finally:
        release.set()
        calls.close()
