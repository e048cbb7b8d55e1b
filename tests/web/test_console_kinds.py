"""The console-kind seam: a pool says which console its desktops get, the host makes
the domain with it, the API reports it, and a kind this broker has no relay for is
refused with a clear answer before any token exists (real slapd, fake host)."""

from __future__ import annotations

import dataclasses

from pools.hypervisor import ImageDisk
from tests.web.conftest import BrokerFactory, start_with_fake_host, window_pool
from vdi.domain import ConsoleKind, DesktopState


def test_a_pool_of_a_console_kind_without_a_relay_is_refused_clearly(
        broker_factory: BrokerFactory, fake_image: ImageDisk) -> None:
    spice = dataclasses.replace(window_pool("spice", min_ready=1, max_size=1),
                                console=ConsoleKind.SPICE)
    fake = start_with_fake_host(broker_factory, fake_image, pools=(window_pool(), spice))
    fake.broker.wait_ready("spice")
    [made] = fake.broker.desktops("spice")
    assert made.console is not None and made.console.kind is ConsoleKind.SPICE
    assert fake.host.domains[made.domain_name].spec.console is ConsoleKind.SPICE
    me = fake.broker.login("zhangsan")
    listed = {p["id"]: p["protocol"] for p in me.client.get("/api/pools").json()["pools"]}
    assert listed == {"window": "vnc", "spice": "spice"}
    refused = me.client.post("/api/pools/spice/connect", headers={"X-CSRF-Token": me.csrf},
                             params={"lang": "en"})
    assert refused.status_code == 409
    assert refused.json() == {
        "error": "console_unsupported",
        "message": "This desktop's console type cannot be opened here yet. Call the helpdesk."}
    [after] = fake.broker.desktops("spice")  # refused before the spare was claimed
    assert after.state is DesktopState.READY and after.assigned_user is None
    with fake.broker.runtime.db() as s:
        from vdi.models import ConsoleTokenRow

        assert s.query(ConsoleTokenRow).count() == 0
    assert me.connect_when_ready("window")["console"].startswith("/console/")
