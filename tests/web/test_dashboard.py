"""The system administrator's dashboard (real app, real slapd, fake host): each pool's
desktops by what they are doing, the hosts' load and state, and alerts for failed
desktops and hosts down."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from broker.dashboard import bucket
from pools.hosts import HostRegistry
from tests.conftest import ManualClock
from tests.web.conftest import FakeHostBroker


def test_desktops_count_where_they_are(fake: FakeHostBroker) -> None:
    admin = fake.broker.login("zhaoliu")

    def board() -> dict[str, Any]:
        r = admin.client.get("/api/admin/dashboard")
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data

    pools = {p["id"]: p for p in board()["pools"]}
    assert set(pools) == {"window", "tools"}
    clerk = fake.broker.login("zhangsan")
    clerk.connect_when_ready("window")
    window = {p["id"]: p for p in board()["pools"]}["window"]
    # the grant was given, no console opened yet: held but disconnected
    assert window["disconnected"] == 1 and window["in_use"] == 0
    [host] = board()["hosts"]
    assert host["status"] == "up" and host["memory_used_mib"] > 0
    # the host stops answering and is marked down: an alert
    fake.host.crash()
    HostRegistry(fake.broker.runtime.db).unanswered(fake.host.uri, "no answer",
                                                    down_after_s=0)
    alerts = board()["alerts"]
    assert {"kind": "host_down", "target": host["name"], "detail": "no answer"} in alerts


def test_the_buckets() -> None:
    now = ManualClock()()
    stale = timedelta(seconds=60)
    assert bucket("assigned", now - timedelta(seconds=10), now, stale) == "in_use"
    assert bucket("assigned", now - timedelta(seconds=61), now, stale) == "disconnected"
    assert bucket("assigned", None, now, stale) == "disconnected"
    assert [bucket(s, None, now, stale) for s in (
        "ready", "provisioning", "reclaiming", "error", "maintenance", "deleted")] == [
        "ready", "booting", "reclaiming", "failed", "reclaiming", None]


def test_domains_the_broker_did_not_make_are_an_alert(fake: FakeHostBroker) -> None:
    admin = fake.broker.login("zhaoliu")
    fake.host.foreign.update({"kylin-by-hand", "old-pc-image", "a", "b", "c", "d"})
    asyncio.run(fake.broker.runtime.worker.monitor.reconcile(fake.host.uri))
    alerts = admin.client.get("/api/admin/dashboard").json()["alerts"]
    [foreign] = [a for a in alerts if a["kind"] == "foreign_domains"]
    assert foreign["detail"] == "a, b, c, d, kylin-by-hand (+1)"
    fake.host.foreign.clear()  # removed at the host: the alert goes at the next round
    asyncio.run(fake.broker.runtime.worker.monitor.reconcile(fake.host.uri))
    alerts = admin.client.get("/api/admin/dashboard").json()["alerts"]
    assert not [a for a in alerts if a["kind"] == "foreign_domains"]
