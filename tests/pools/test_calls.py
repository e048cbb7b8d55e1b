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


async def test_guests_coming_up_do_not_hold_the_threads_other_calls_need() -> None:
    host = FakeHypervisor("fake://busy/system")
    calls = HostCalls({host.uri: host}, timeout_s=5, max_threads=1, max_waits=4)
    release = threading.Event()

    def boot_wait(h: Hypervisor) -> str:
        release.wait(10)  # a guest taking its time to come up
        return h.uri

    try:
        waits = [asyncio.create_task(calls.run(host.uri, boot_wait, timeout_s=30, wait=True))
                 for _ in range(4)]
        await asyncio.sleep(0.1)
        # the one ordinary thread is free: a console password or a create goes through
        info = await asyncio.wait_for(calls.run(host.uri, lambda h: h.host_info()), 2)
        assert info.hostname == host.uri
        assert not any(w.done() for w in waits)
        release.set()
        assert await asyncio.gather(*waits) == [host.uri] * 4
    finally:
        release.set()
        calls.close()
