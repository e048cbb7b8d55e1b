"""Two brokers on one PostgreSQL database, as a district runs them behind a proxy: each
with its own runtime, engine and console registry (two uvicorn servers), sharing only
the database. A clerk's console open through broker B closes within seconds when the
clerk logs out through broker A, and when the directory's administrator removes the
clerk from their group. Real slapd (the module's own, changed with ldapmodify), real
PostgreSQL, a real guest on libvirtd.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from harness.ldap_server import GROUP_BASE, USER_BASE, SlapdServer
from harness.pg_server import PgServer
from pools.hypervisor import Hypervisor, ImageDisk
from pools.libvirt.host import LibvirtHost
from tests.conftest import LIBVIRT_URI, TEST_STORAGE_DIR, TEST_STORAGE_POOL, remove_test_objects
from tests.web.conftest import RunningBroker, start_broker, wait_for, window_pool
from tests.web.test_console import CLOSE_BOUND_S, open_console

pytestmark = pytest.mark.real

PREFIX = "vdit-2b-"
IMAGE_ID = f"{PREFIX}img"
RECHECK_S = 2


@pytest.fixture(scope="module")
def own_slapd() -> Iterator[SlapdServer]:
    with SlapdServer() as server:
        yield server


@pytest.fixture(scope="module")
def brokers(tmp_path_factory: pytest.TempPathFactory, own_slapd: SlapdServer,
            libvirt_host: LibvirtHost, guest_image: ImageDisk
            ) -> Iterator[tuple[RunningBroker, RunningBroker]]:
    """Broker A serves web only; broker B serves web and runs the worker."""
    leftovers = remove_test_objects(PREFIX)
    assert not leftovers, leftovers
    tmp = tmp_path_factory.mktemp("two-brokers")
    started: list[RunningBroker] = []
    with PgServer() as pg:
        try:
            hosts: dict[str, Hypervisor] = {LIBVIRT_URI: libvirt_host}
            common: dict[str, Any] = {"libvirt_uri": LIBVIRT_URI,
                      "storage_pool": TEST_STORAGE_POOL, "storage_dir": TEST_STORAGE_DIR,
                      "domain_type": "qemu", "domain_prefix": PREFIX,
                      "database_url": pg.url, "libvirt_timeout_s": 30.0,
                                      "session_recheck_s": RECHECK_S}
            b = start_broker(tmp / "b", own_slapd, hosts=hosts, run_worker=True, **common)
            started.append(b)
            a = start_broker(tmp / "a", own_slapd, hosts=hosts, run_worker=False, **common)
            started.append(a)
            b.publish_image(libvirt_host, IMAGE_ID, guest_image)
            b.save_pool(window_pool(image=IMAGE_ID, min_ready=1, max_size=1))
            b.wait_ready("window", timeout_s=90.0)
            yield a, b
        finally:
            for broker in started:
                broker.stop()
            problems = remove_test_objects(PREFIX)
            assert not problems, problems


def test_logout_through_one_broker_closes_the_console_on_the_other(
        brokers: tuple[RunningBroker, RunningBroker]) -> None:
    a, b = brokers
    on_b = b.login("zhangsan")
    rfb = open_console(on_b)
    try:
        rfb.handshake()
        rfb.wait_update()
        assert len(b.runtime.tunnels.open_for(username="zhangsan")) == 1
        # the same browser session, its request routed to broker A by the proxy
        on_a = a.client()
        on_a.cookies.set(on_b.cookie_header.split("=", 1)[0], on_b.cookie)
        out = on_a.delete("/api/session", headers={"X-CSRF-Token": on_b.csrf})
        assert out.status_code == 200, out.text
        assert not a.runtime.tunnels.open_for()  # A never carried it
        code = rfb.wait_closed(CLOSE_BOUND_S)
        assert code == 1008  # closed by the broker: the session ended
    finally:
        rfb.ws.close()
    wait_for(lambda: not b.runtime.tunnels.open_for(), CLOSE_BOUND_S,
             "broker B to forget the closed console")
    closed = b.audit(action="console", outcome="closed")
    assert closed and "session ended" in closed[-1].detail


def test_a_clerk_removed_from_their_group_loses_the_open_console_within_the_bound(
        brokers: tuple[RunningBroker, RunningBroker], own_slapd: SlapdServer) -> None:
    _, b = brokers
    me = b.login("zhangsan")
    rfb = open_console(me)
    try:
        rfb.handshake()
        rfb.wait_update()
        own_slapd.modify(f"dn: cn=dongjie-window,{GROUP_BASE}\nchangetype: modify\n"
                         f"delete: member\nmember: uid=zhangsan,{USER_BASE}\n")
        # the page asks nothing meanwhile: broker B's own round re-checks the user
        code = rfb.wait_closed(RECHECK_S + CLOSE_BOUND_S)
        assert code == 1008
    finally:
        rfb.ws.close()
    assert me.client.get("/api/session").status_code == 401
    ended = b.audit(action="session-end")
    assert ended and ended[-1].actor == "zhangsan"
    assert ended[-1].detail.startswith("no role or pool left")


def test_the_login_throttle_holds_across_both_brokers_against_simultaneous_attempts(
        brokers: tuple[RunningBroker, RunningBroker]) -> None:
    a, b = brokers
    attempts = 20

    def wrong(i: int) -> int:
        broker = (a, b)[i % 2]  # the proxy spreads them over both brokers
        with broker.client() as c:
            r = c.post("/api/session", json={"username": "lisi", "password": f"guess{i}"})
            return r.status_code

    with ThreadPoolExecutor(attempts) as pool:
        codes = list(pool.map(wrong, range(attempts)))
    # exactly the limit (5) reached the directory, over both brokers together
    assert sorted(codes) == [401] * 5 + [429] * (attempts - 5)
    # one database: either broker's audit shows both brokers' entries
    denied = [e for e in a.audit(action="login", outcome="denied") if e.actor == "lisi"]
    assert len(denied) == 5
    throttled = [e for e in a.audit(action="login", outcome="throttled") if e.actor == "lisi"]
    assert len(throttled) == attempts - 5
