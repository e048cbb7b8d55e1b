"""Sessions follow the directory (real slapd of this module's own, changed with
ldapmodify as an administrator would): a clerk removed from their group, or from the
directory, loses the session within the re-check bound, and a console is granted only
to a user the directory confirms at that moment. A user whose groups change keeps the
session with the roles as they are now."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.ldap_server import GROUP_BASE, USER_BASE, SlapdServer
from pools.fake_hypervisor import FakeHypervisor
from tests.web.conftest import (
    ADMIN_GROUP,
    FakeHostBroker,
    start_broker,
    wait_for,
    window_pool,
    write_fake_image,
)

pytestmark = pytest.mark.real

RECHECK_S = 1


@pytest.fixture
def own_slapd() -> Iterator[SlapdServer]:
    with SlapdServer() as server:
        yield server


@pytest.fixture
def broker(tmp_path: Path, own_slapd: SlapdServer) -> Iterator[FakeHostBroker]:
    host = FakeHypervisor("fake:///directory-tests")
    b = start_broker(tmp_path / "broker", own_slapd, hosts={host.uri: host},
                     libvirt_uri=host.uri, session_recheck_s=RECHECK_S,
                     console_grant_confirm_s=0)
    try:
        b.publish_image(host, "guest", write_fake_image(tmp_path / "image"))
        b.save_pool(window_pool(min_ready=1, max_size=2))
        yield FakeHostBroker(b, host)
    finally:
        b.stop()


def leave_group(slapd: SlapdServer, user: str, group: str) -> None:
    slapd.modify(f"dn: cn={group},{GROUP_BASE}\nchangetype: modify\ndelete: member\n"
                 f"member: uid={user},{USER_BASE}\n")


def test_a_clerk_removed_from_their_group_is_refused_a_console_at_once(
        broker: FakeHostBroker, own_slapd: SlapdServer) -> None:
    b = broker.broker
    b.wait_ready("window")
    me = b.login("sunqi")
    assert me.client.get("/api/pools").status_code == 200
    leave_group(own_slapd, "sunqi", "dongjie-window")
    refused = me.connect("window")  # asked now, not after the bound
    assert refused.status_code == 401 and refused.json()["error"] == "not_signed_in"
    assert me.client.get("/api/pools").status_code == 401
    ended = b.audit(action="session-end")
    assert [(e.actor, e.detail.split(";")[0]) for e in ended] == [
        ("sunqi", "no role or pool left")]
    assert all(d.assigned_user != "sunqi" for d in b.desktops("window"))


def test_a_clerk_deleted_from_the_directory_loses_the_session_within_the_bound(
        broker: FakeHostBroker, own_slapd: SlapdServer) -> None:
    b = broker.broker
    me = b.login("zhangsan")
    assert me.client.get("/api/session").status_code == 200
    own_slapd.modify(f"dn: uid=zhangsan,{USER_BASE}\nchangetype: delete\n")
    # no request needs to come in the meantime: the next one after the bound says so
    wait_for(lambda: me.client.get("/api/session").status_code == 401, RECHECK_S + 5,
             "the session of a deleted account to end")
    assert b.audit(action="session-end")[-1].detail.startswith("gone from the directory")


def test_new_groups_change_the_roles_of_a_live_session(
        broker: FakeHostBroker, own_slapd: SlapdServer) -> None:
    b = broker.broker
    me = b.login("sunqi")
    assert me.client.get("/api/admin/reclaims").status_code == 403
    own_slapd.modify(f"dn: {ADMIN_GROUP}\nchangetype: modify\nadd: member\n"
                     f"member: uid=sunqi,{USER_BASE}\n")
    wait_for(lambda: me.client.get("/api/admin/reclaims").status_code == 200,
             RECHECK_S + 5, "the new admin role to reach the live session")
    assert "sysadmin" in me.client.get("/api/session").json()["roles"]
    assert b.audit(action="session-roles")[-1].actor == "sunqi"
