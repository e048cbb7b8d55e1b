"""Through the HTTP API: 50 clerks at once against a pool of 10, one clerk's parallel
connects, and log-off for floating and dedicated pools (fake host, real slapd)."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from broker.auth.fake_directory import FakeDirectory
from pools.fake_hypervisor import FakeHypervisor
from pools.hypervisor import ImageDisk
from pools.jobs.queue import JobKind
from tests.web.conftest import (
    STAFF_GROUP,
    BrokerFactory,
    FakeHostBroker,
    start_with_fake_host,
    wait_for,
    window_pool,
)
from vdi.domain import DesktopState, PoolKind, Principal, Role
from vdi.models import JobRow
from web.access import cookie_name

CLERKS = 50
# the demo directory has three clerks: these fifty live in a directory of their own (a
# console is granted only to a user the directory confirms)
CLERK_DIRECTORY = FakeDirectory({f"clerk{i:02d}": ("pw", f"Clerk {i}", (STAFF_GROUP,))
                                 for i in range(CLERKS)})

pytestmark = pytest.mark.real


def clerk_sessions(fake: FakeHostBroker, n: int) -> list[tuple[str, str]]:
    """n signed-in clerks (sessions made directly)."""
    svc = fake.broker.runtime
    out = []
    for i in range(n):
        who = Principal(username=f"clerk{i:02d}", display_name=f"Clerk {i}",
                        roles=frozenset({Role.STAFF}), groups=frozenset({STAFF_GROUP}))
        raw, session = svc.sessions.create(who, "test")
        out.append((raw, session.csrf))
    return out


def connect(fake: FakeHostBroker, raw: str, csrf: str, pool_id: str) -> httpx.Response:
    b = fake.broker
    with httpx.Client(base_url=b.url, timeout=60, headers={"Origin": b.url},
                      cookies={cookie_name(b.settings): raw}) as c:
        return c.post(f"/api/pools/{pool_id}/connect", headers={"X-CSRF-Token": csrf})


def test_fifty_clerks_at_once_against_a_pool_of_ten(broker_factory: BrokerFactory,
                                                     fake_image: ImageDisk) -> None:
    fake = start_with_fake_host(broker_factory, fake_image, directory=CLERK_DIRECTORY,
                                pools=(window_pool(min_ready=10, max_size=10),))
    fake.broker.wait_ready("window", 10)
    clerks = clerk_sessions(fake, CLERKS)
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda c: connect(fake, c[0], c[1], "window"), clerks))
    granted = [a.json()["desktop"] for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert len(granted) == 10 and len(set(granted)) == 10
    assert len(refused) == 40
    assert {(a.status_code, a.json()["error"]) for a in refused} == {(409, "pool_full")}
    assert all("暂无空闲桌面" in a.json()["message"]  # zh-CN unless the browser asks otherwise
               for a in refused)
    assigned = fake.broker.desktops("window", (DesktopState.ASSIGNED,))
    assert sorted(d.id for d in assigned) == sorted(granted)
    assert len({d.assigned_user for d in assigned}) == 10
    assert len(fake.host.domains) == 10  # the worker made no eleventh desktop


def test_one_clerks_ten_parallel_connects_get_one_desktop(broker_factory: BrokerFactory,
                                                          fake_image: ImageDisk) -> None:
    fake = start_with_fake_host(broker_factory, fake_image, directory=CLERK_DIRECTORY,
                                pools=(window_pool(min_ready=3, max_size=6),))
    fake.broker.wait_ready("window", 3)
    [(raw, csrf)] = clerk_sessions(fake, 1)
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: connect(fake, raw, csrf, "window"), range(10)))
    assert {a.status_code for a in answers} == {200}
    assert len({a.json()["desktop"] for a in answers}) == 1
    assert len(fake.broker.desktops("window", (DesktopState.ASSIGNED,))) == 1


def test_log_off_floating_reverts_dedicated_keeps(broker_factory: BrokerFactory,
                                                  fake_image: ImageDisk) -> None:
    own = dataclasses.replace(window_pool("own", min_ready=1, max_size=2),
                              kind=PoolKind.DEDICATED)
    fake = start_with_fake_host(broker_factory, fake_image, pools=(window_pool(), own))
    fake.broker.wait_ready("window")
    fake.broker.wait_ready("own")
    me = fake.broker.login("zhangsan")
    floating = me.connect_when_ready("window")["desktop"]
    dedicated = me.connect_when_ready("own")["desktop"]
    no_csrf = me.client.post("/api/pools/window/logoff")
    assert no_csrf.status_code == 403
    r = me.client.post("/api/pools/window/logoff", headers={"X-CSRF-Token": me.csrf})
    assert r.status_code == 200 and r.json() == {"desktop": floating, "reverted": True}
    again = me.client.post("/api/pools/window/logoff", headers={"X-CSRF-Token": me.csrf},
                           params={"lang": "en"})
    assert again.status_code == 404 and again.json()["error"] == "no_desktop"
    r = me.client.post("/api/pools/own/logoff", headers={"X-CSRF-Token": me.csrf})
    assert r.status_code == 200 and r.json() == {"desktop": dedicated, "reverted": False}
    wait_for(lambda: any(d.id == floating and d.state is DesktopState.READY
                         for d in fake.broker.desktops("window")), 10, "the revert")
    with fake.broker.runtime.db() as s:
        kinds = [(j.desktop_id, j.kind) for j in s.query(JobRow).order_by(JobRow.id)]
    assert (floating, JobKind.REVERT.value) in kinds
    assert not [k for d, k in kinds if d == dedicated and k != JobKind.PROVISION.value]
    assert me.connect_when_ready("own")["desktop"] == dedicated
    entries = fake.broker.audit(action="logoff")
    assert [e.target for e in entries] == [floating, dedicated]
    assert "reverted" in entries[0].detail and "kept" in entries[1].detail
    other = fake.broker.login("zhangsan")
    assert other.client.post("/api/pools/nope/logoff",
                             headers={"X-CSRF-Token": other.csrf}).status_code == 404


def test_no_room_on_any_host_is_said_clearly(broker_factory: BrokerFactory,
                                             fake_image: ImageDisk) -> None:
    host = FakeHypervisor("fake:///small", memory_mib=600)  # room for two 256 MiB desktops
    broker = broker_factory(hosts={host.uri: host}, libvirt_uri=host.uri)
    broker.publish_image(host, "guest", fake_image)
    broker.save_pool(window_pool(min_ready=2, max_size=4))
    broker.wait_ready("window", 2)
    first, second = broker.login("zhangsan"), broker.login("lisi")
    assert first.connect_when_ready("window") and second.connect_when_ready("window")
    third = broker.login("sunqi")
    r = third.client.post("/api/pools/window/connect", headers={
        "X-CSRF-Token": third.csrf, "Accept-Language": "en"})
    assert r.status_code == 503 and r.json()["error"] == "no_capacity"
    assert "servers are full" in r.json()["message"] and r.headers["Retry-After"] == "30"
    assert [e.outcome for e in broker.audit(action="connect")][-1] == "no_capacity"
    assert len(host.domains) == 2
