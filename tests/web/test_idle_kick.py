"""The idle policy's `disconnect` closes the clerk's open console: a real console
tunnel (uvicorn, the broker app, a TCG guest on the real libvirtd, slapd) and a policy
in seconds. The timing of the policy itself is tested on a hand-moved clock in
tests/pools/test_reclaim_worker.py; here the worker's decision has to reach the tunnel
through the database and the broker's input flush.

Pool `window` of size 1 (domain prefix `vdit-kick-`), destroyed with its disk at the end.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select, update
from websockets.exceptions import ConnectionClosed

from harness.ldap_server import SlapdServer
from pools.hypervisor import ImageDisk
from pools.libvirt.host import LibvirtHost
from tests.conftest import LIBVIRT_URI, TEST_STORAGE_DIR, TEST_STORAGE_POOL, remove_test_objects
from tests.web.conftest import RunningBroker, start_broker, window_pool
from tests.web.test_console import RfbClient, open_console
from vdi.domain import DesktopState
from vdi.models import DesktopUseRow, PoolRow, ReclaimRow

pytestmark = pytest.mark.real

PREFIX = "vdit-kick-"
IMAGE_ID = f"{PREFIX}img"
# idle at once, a one-second countdown, then the console is taken; the desktop stays the
# clerk's for ten minutes. The same in every shift: the test does not depend on the hour.
POLICY = {"shifts": {shift: {"disconnect_grace_s": 600, "idle_warn_after_s": 0,
                             "idle_countdown_s": 1, "idle_action": "disconnect",
                             "logoff_action": "log_off"}
                     for shift in ("office", "after_hours", "off_day")}}
# input reaches the database 0.2 s late at most, so the policy waits 5.2 s past each of
# its deadlines (the warning and the action): about 12 s from the console's opening
KICK_BOUND_S = 45.0
RECLAIMED = 4001  # web.console's close code for a console the idle policy took


@pytest.fixture(scope="module")
def kick_broker(tmp_path_factory: pytest.TempPathFactory, slapd: SlapdServer,
                libvirt_host: LibvirtHost, guest_image: ImageDisk) -> Iterator[RunningBroker]:
    leftovers = remove_test_objects(PREFIX)  # from an earlier run that was killed
    assert not leftovers, leftovers
    broker = start_broker(tmp_path_factory.mktemp("kick"), slapd,
                          hosts={LIBVIRT_URI: libvirt_host}, libvirt_uri=LIBVIRT_URI,
                          storage_pool=TEST_STORAGE_POOL, storage_dir=TEST_STORAGE_DIR,
                          domain_type="qemu", domain_prefix=PREFIX, libvirt_timeout_s=30.0,
                          input_flush_s=0.2, reclaim_interval_s=0.5)
    try:
        broker.publish_image(libvirt_host, IMAGE_ID, guest_image)
        broker.save_pool(window_pool(image=IMAGE_ID, min_ready=1, max_size=1))
        with broker.runtime.db.begin() as s:
            s.execute(update(PoolRow).where(PoolRow.id == "window").values(
                reclaim_policy=POLICY))
        broker.wait_ready("window", timeout_s=90.0)
        yield broker
    finally:
        broker.stop()
        problems = remove_test_objects(PREFIX)
        assert not problems, problems


def closed_by_broker(rfb: RfbClient, bound_s: float) -> tuple[int, str]:
    """Read until the broker closes the websocket; its close code and reason."""
    deadline = time.monotonic() + bound_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                rfb.ws.recv(timeout=left)
            except TimeoutError:
                break
    except ConnectionClosed as e:
        assert e.rcvd is not None, "the connection dropped without a close frame"
        return e.rcvd.code, e.rcvd.reason
    pytest.fail(f"the console was still open after {bound_s} s")


def stays_open(rfb: RfbClient, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            rfb.ws.recv(timeout=left)
        except TimeoutError:
            return
        except ConnectionClosed as e:
            pytest.fail(f"the console was closed: {e.rcvd}")


def test_the_disconnect_action_closes_the_open_console(kick_broker: RunningBroker) -> None:
    svc = kick_broker.runtime
    me = kick_broker.login("zhangsan")
    rfb = open_console(me)
    try:
        rfb.handshake()
        rfb.wait_update()  # a working console; no key or pointer event is sent
        opened = time.monotonic()
        code, reason = closed_by_broker(rfb, KICK_BOUND_S)
        assert (code, reason) == (RECLAIMED, "idle")
        assert time.monotonic() - opened > 5  # not before the policy's time
    finally:
        rfb.ws.close()
    [mine] = [d for d in kick_broker.desktops("window") if d.assigned_user == "zhangsan"]
    assert mine.state is DesktopState.ASSIGNED  # disconnected, not logged off
    with svc.db() as s:
        taken = [(r.desktop_id, r.username, r.action, r.cause)
                 for r in s.scalars(select(ReclaimRow))]
    assert taken == [(mine.id, "zhangsan", "disconnect", "idle")]
    closes = kick_broker.audit(action="console", outcome="closed")
    assert closes and closes[-1].detail == "closed by the broker: idle"
    # metering saw one use of the desktop, from the console's opening to the kick
    with svc.db() as s:
        used = [(u.desktop_id, u.username, u.pool_id, u.ended_at is not None)
                for u in s.scalars(select(DesktopUseRow))]
        [(began, ended)] = s.execute(select(DesktopUseRow.started_at,
                                            DesktopUseRow.ended_at)).all()
    assert used == [(mine.id, "zhangsan", "window", True)]
    assert ended is not None and 5 < (ended - began).total_seconds() < KICK_BOUND_S

    # within the grace the clerk comes back into the same desktop, and the console
    # opened after the disconnect is not closed for it
    again = me.connect_when_ready("window")
    assert again["desktop"] == mine.id
    rfb = open_console(me, again["console"])
    try:
        rfb.handshake()
        rfb.wait_update()
        stays_open(rfb, 3.0)  # fifteen input flushes
    finally:
        rfb.ws.close()
