"""The security administrator's access policy through the API (real app, real slapd, fake
host; requests from 127.0.0.2 are a second machine on the loopback): administrator and
helpdesk requests from outside the admin networks are refused and recorded while clerks
work on; the role groups in the policy replace the configured ones at the next sign-in;
a change that would lock its author out, or that overwrites another one, is refused;
every change is recorded with its reason."""

from __future__ import annotations

from typing import Any

import httpx

from tests.web.conftest import (
    ADMIN_GROUP,
    AUDIT_GROUP,
    SECURITY_GROUP,
    STAFF_GROUP,
    FakeHostBroker,
    RunningBroker,
)
from vdi.settings import RoleMap

OTHER = "127.0.0.2"


def from_other_machine(broker: RunningBroker, username: str) -> httpx.Client:
    c = httpx.Client(base_url=broker.url, headers={"Origin": broker.url}, timeout=30.0,
                     transport=httpx.HTTPTransport(local_address=OTHER))
    broker.clients.append(c)
    r = c.post("/api/session", json={"username": username, "password": "demo2026"})
    assert r.status_code == 200, r.text
    return c


def test_the_security_administrator_sets_the_access_policy(fake: FakeHostBroker) -> None:
    broker = fake.broker
    security = broker.login("wujiu")
    csrf = {"X-CSRF-Token": security.csrf}
    first = security.client.get("/api/security/policy").json()
    assert first["version"] == 0 and first["policy"]["admin_networks"] == []
    assert first["defaults"]["role_groups"]["security_admin"] == [SECURITY_GROUP]

    def put(policy: dict[str, Any], version: int, reason: str = "等保整改：限制管理网段"
            ) -> httpx.Response:
        return security.client.put("/api/security/policy", headers=csrf, json={
            "policy": policy, "version": version, "reason": reason})

    locked_out = put({"admin_networks": ["10.20.0.0/16"]}, 0)
    assert locked_out.status_code == 409 and locked_out.json()["error"] == "would_lock_out"
    bad = put({"admin_networks": ["10.20.0.0/33"]}, 0)
    assert bad.status_code == 400 and "10.20.0.0/16" in bad.json()["message"]
    assert put({"session_idle_s": 30}, 0).status_code == 400
    assert put({"admin_networks": []}, 0, reason="x").status_code == 400
    done = put({"admin_networks": ["127.0.0.1/32"], "session_idle_s": 900}, 0)
    assert done.status_code == 200, done.text
    assert done.json()["version"] == 1 and done.json()["updated_by"] == "wujiu"
    stale = put({"admin_networks": []}, 0)
    assert stale.status_code == 409 and stale.json()["error"] == "policy_changed"
    [change] = broker.audit(action="policy-change")
    assert change.actor == "wujiu" and "reason: 等保整改：限制管理网段" in change.detail
    assert broker.runtime.api is not None
    assert broker.runtime.api.policy.session_limits()[0] == 900

    # from the other machine: the administrator is refused (and recorded), the clerk is not
    admin = from_other_machine(broker, "zhaoliu")
    refused = admin.get("/api/admin/dashboard")
    assert refused.status_code == 403 and refused.json()["error"] == "network_not_allowed"
    [noted] = broker.audit(action="network-refused")
    assert (noted.actor, noted.target, noted.source) == (
        "zhaoliu", "/api/admin/dashboard", OTHER)
    clerk = from_other_machine(broker, "zhangsan")
    assert clerk.get("/api/pools").status_code == 200
    here = broker.login("zhaoliu")
    assert here.client.get("/api/admin/dashboard").status_code == 200
    # an API token is held to the same networks as a session
    made = here.client.post("/api/tokens", json={"name": "nightly", "days": 1},
                            headers={"X-CSRF-Token": here.csrf})
    assert made.status_code == 201, made.text
    bearer = {"Authorization": f"Bearer {made.json()['secret']}"}
    assert httpx.get(f"{broker.url}/api/admin/dashboard", headers=bearer).status_code == 200
    with httpx.Client(transport=httpx.HTTPTransport(local_address=OTHER)) as script:
        far = script.get(f"{broker.url}/api/admin/dashboard", headers=bearer)
    assert far.status_code == 403 and far.json()["error"] == "network_not_allowed"
    with httpx.Client(transport=httpx.HTTPTransport(local_address=OTHER)) as script:
        # a token is an administrator's or helpdesk member's: no route from outside
        me = script.get(f"{broker.url}/api/session", headers=bearer)
    assert me.status_code == 403 and me.json()["error"] == "network_not_allowed"
    # a page polling from outside leaves one record, not one a request
    for _ in range(3):
        assert admin.get("/api/admin/dashboard").status_code == 403
    # zhaoliu from 127.0.0.2: the dashboard (by session, then by token: one record) and
    # the session route by token
    assert [(a.actor, a.target) for a in broker.audit(action="network-refused")] == [
        ("zhaoliu", "/api/admin/dashboard"), ("zhaoliu", "/api/session")]

    # role groups from the policy: the auditors' group now grants the helpdesk role only
    groups = {"staff": [STAFF_GROUP], "helpdesk": [AUDIT_GROUP],
              "system_admin": [ADMIN_GROUP], "security_admin": [SECURITY_GROUP],
              "audit_admin": []}
    assert put({"admin_networks": ["127.0.0.1/32"], "role_groups": {
        **groups, "security_admin": [ADMIN_GROUP]}}, 1).json()["error"] == "would_lock_out"
    moved = put({"admin_networks": ["127.0.0.0/8"], "role_groups": groups}, 1)
    assert moved.status_code == 200, moved.text
    auditor = broker.login("zhengshi")
    assert auditor.body["roles"] == ["helpdesk"]
    assert auditor.client.get("/api/admin/audit").status_code == 403
    # a policy as large as the limits allow is taken (the body is far over 4 KiB)
    big_groups = {k: [f"cn={k}-{i:02d}-{'x' * 400},ou=groups,dc=district,dc=example"
                      for i in range(50)] for k in groups}
    big_groups["security_admin"][0] = SECURITY_GROUP
    nets = [f"10.{i}.0.0/16" for i in range(63)] + ["127.0.0.0/8"]
    big = put({"admin_networks": nets, "role_groups": big_groups}, 2, reason="大" * 500)
    assert big.status_code == 200, big.text[:300]
    back = put({"admin_networks": []}, 3, reason="恢复配置文件中的角色组")
    assert back.status_code == 200 and back.json()["policy"]["role_groups"] is None
    assert broker.login("zhengshi").body["roles"] == ["auditadmin"]


def test_the_policy_from_its_json() -> None:
    from broker.access_policy import AccessPolicy, parse_policy

    p = parse_policy({"admin_networks": ["10.20.3.4/16", " 192.168.1.0/24", "::1"],
                      "session_idle_s": 600, "session_absolute_s": None})
    assert p.admin_networks == ("10.20.0.0/16", "192.168.1.0/24", "::1/128")
    assert p.admits("10.20.200.1") and p.admits("::1") and not p.admits("10.21.0.1")
    assert not p.admits("unknown")
    assert p.admits("::ffff:10.20.1.2") and not p.admits("::ffff:10.21.1.2")
    assert AccessPolicy().admits("203.0.113.9")  # no networks: from anywhere
    assert parse_policy(p.to_json()) == p
    with_groups = parse_policy({"role_groups": {
        "staff": ["cn=a,dc=x"], "helpdesk": [], "system_admin": [], "audit_admin": [],
        "security_admin": ["cn=s,dc=x", "cn=s,dc=x"]}})
    assert with_groups.role_groups == RoleMap(staff=("cn=a,dc=x",), security_admin=("cn=s,dc=x",))
