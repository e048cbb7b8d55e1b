"""The system administrator's API (real app, real slapd, fake host): pools with their
idle policy and spare schedule as JSON, images and their versions, hosts, desktops and
the live sessions; each change audited as the signed-in admin from their address, and
each bad input answered with what is wrong."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from pools.hypervisor import ImageDisk, file_digest
from tests.web.conftest import (
    BrokerFactory,
    FakeHostBroker,
    SignedIn,
    start_with_fake_host,
    wait_for,
    write_fake_image,
)

POLICY: dict[str, Any] = {
    "calendar": {"timezone": "Asia/Shanghai", "working_days": ["mon", "tue", "wed", "thu",
                                                                "fri"],
                 "opens": "08:30", "closes": "17:30", "holidays": ["2027-02-11"]},
    "shifts": {"office": {"disconnect_grace_s": 240, "idle_warn_after_s": 1200,
                          "idle_countdown_s": 90, "idle_action": "disconnect",
                          "logoff_action": "log_off"}},
    "spares": {"mode": "static", "levels": [{"days": "working", "at": "08:45",
                                             "min_ready": 2}]},
}


def send(admin: SignedIn, method: str, path: str, body: object) -> httpx.Response:
    return admin.client.request(method, path, json=body, headers={"X-CSRF-Token": admin.csrf})


def refused(r: httpx.Response, status: int, code: str, words: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and words in body["message"], body


def test_pools_are_created_and_changed_with_their_policy(fake: FakeHostBroker) -> None:
    admin = fake.broker.login("zhaoliu")
    listed = {p["id"]: p for p in admin.client.get("/api/admin/pools").json()["pools"]}
    assert set(listed) == {"window", "tools"}
    assert listed["window"]["policy"]["shifts"]["office"]["idle_action"]  # defaults filled

    r = send(admin, "POST", "/api/admin/pools", {
        "id": "counter", "name": "柜台", "image": "guest", "max_size": 3, "min_ready": 0,
        "groups": ["cn=window-staff,ou=groups,dc=district,dc=example"], "policy": POLICY})
    assert r.status_code == 201, r.text
    pool = admin.client.get("/api/admin/pools/counter").json()
    assert (pool["name"], pool["kind"], pool["max_size"]) == ("柜台", "floating", 3)
    assert pool["policy"]["shifts"]["office"]["disconnect_grace_s"] == 240
    assert pool["policy"]["calendar"]["holidays"] == ["2027-02-11"]
    assert pool["policy"]["spares"]["levels"] == [
        {"days": "working", "at": "08:45", "min_ready": 2}]
    # the change names what changed; the actor is the signed-in admin, from their address
    [created] = fake.broker.audit(action="pool-set")
    assert (created.actor, created.role, created.source, created.target) == (
        "zhaoliu", "sysadmin", "127.0.0.1", "counter")
    [policy] = fake.broker.audit(action="pool-policy")
    assert policy.detail == "from the admin console"

    r = send(admin, "PATCH", "/api/admin/pools/counter", {"max_size": 5, "network": "user"})
    assert r.status_code == 200 and r.json()["max_size"] == 5, r.text
    assert r.json()["kind"] == "floating"  # left out: unchanged


def test_bad_pool_values_are_named_and_change_nothing(fake: FakeHostBroker) -> None:
    admin = fake.broker.login("zhaoliu")
    new = {"id": "counter", "name": "柜台", "image": "guest"}
    refused(send(admin, "POST", "/api/admin/pools", {"id": "counter"}), 400, "invalid",
            "a new pool needs a name and an image")
    refused(send(admin, "POST", "/api/admin/pools", {**new, "vcpus": "two"}), 400, "invalid",
            "vcpus: a whole number")
    refused(send(admin, "POST", "/api/admin/pools", {**new, "colour": "red"}), 400,
            "invalid", "unknown field(s): colour")
    refused(send(admin, "POST", "/api/admin/pools", {**new, "id": "a b"}), 400, "invalid",
            "pool id: 1-32 letters")
    refused(send(admin, "POST", "/api/admin/pools", {**new, "min_ready": 5, "max_size": 2}),
            400, "invalid", "min_ready <= max_size")
    # a floating pool's desktop is never shut down: the policy file's own rule
    bad_policy = {"shifts": {"office": {"idle_action": "shut_down"}}}
    refused(send(admin, "POST", "/api/admin/pools", {**new, "policy": bad_policy}), 400,
            "invalid", "policy:")
    too_many = {"spares": {"levels": [{"days": "working", "at": "08:00", "min_ready": 9}]}}
    refused(send(admin, "POST", "/api/admin/pools", {**new, "policy": too_many}), 400,
            "invalid", "max_size")
    assert admin.client.get("/api/admin/pools/counter").status_code == 404
    assert not fake.broker.audit(action="pool-set")
    refused(send(admin, "POST", "/api/admin/pools", {**new, "id": "window"}), 409,
            "conflict", "exists already")
    refused(send(admin, "PATCH", "/api/admin/pools/nowhere", {"max_size": 2}), 404,
            "not_found", "no such pool: nowhere")
    refused(send(admin, "PATCH", "/api/admin/pools/window", {}), 400, "invalid",
            "at least one value")
    r = admin.client.patch("/api/admin/pools/window", content=b"{not json",
                           headers={"X-CSRF-Token": admin.csrf})
    refused(r, 400, "invalid", "JSON object")
    # a pool with desktops does not change kind (its clerks' disks)
    fake.broker.wait_ready("window")
    refused(send(admin, "PATCH", "/api/admin/pools/window", {"kind": "dedicated"}), 409,
            "conflict", "cannot change from floating to dedicated")
    # in Chinese, the explanation follows the translated start
    refused(send(admin, "PATCH", "/api/admin/pools/window", {"office": "xijie"}), 400,
            "invalid", "office: no such street office: xijie")
    zh = admin.client.patch("/api/admin/pools/nowhere", json={"max_size": 2},
                            headers={"X-CSRF-Token": admin.csrf, "Accept-Language": "zh-CN"})
    assert zh.status_code == 404
    assert zh.json()["message"] == "未找到： no such pool: nowhere", zh.json()
    assert zh.json()["detail"] == "no such pool: nowhere"


def another_build(directory: Path) -> ImageDisk:
    """A second build of the fake image (other bytes, so another digest)."""
    first = write_fake_image(directory)
    with first.path.open("ab") as f:
        f.write(b"build 2")
    return replace(first, digest=file_digest(first.path))


def test_images_versions_release_rollback_and_trial(fake: FakeHostBroker,
                                                     tmp_path: Path) -> None:
    admin = fake.broker.login("zhaoliu")
    fake.broker.publish_image(fake.host, "guest", another_build(tmp_path / "v2"))
    [image] = admin.client.get("/api/admin/images").json()["images"]
    assert image["id"] == "guest" and [v["version"] for v in image["versions"]] == [1, 2]
    assert set(image["following"]) == {"window", "tools"}

    r = send(admin, "POST", "/api/admin/images/guest/release", {"version": 2})
    assert r.status_code == 200, r.text
    r = send(admin, "POST", "/api/admin/images/guest/release", {"version": 1})
    assert r.status_code == 200 and r.json()["before"] == 2
    r = send(admin, "POST", "/api/admin/images/guest/release", {"version": 2})
    versions = {v["version"]: v for v in admin.client.get("/api/admin/images").json()[
        "images"][0]["versions"]}
    assert (versions[2]["state"], versions[1]["state"]) == ("released", "previous")
    r = send(admin, "POST", "/api/admin/images/guest/rollback", {})
    assert r.status_code == 200 and r.json() == {"image": "guest", "released": 1, "before": 2}
    refused(send(admin, "POST", "/api/admin/images/guest/rollback", {}), 409, "conflict",
            "no version older than 1")
    assert [a.detail for a in fake.broker.audit(action="image-rollback")] == ["v2 -> v1"]

    r = send(admin, "POST", "/api/admin/images/guest/trial", {"pool": "tools", "version": 2})
    assert r.status_code == 200, r.text
    versions = {v["version"]: v for v in admin.client.get("/api/admin/images").json()[
        "images"][0]["versions"]}
    assert versions[2]["trial_pools"] == ["tools"]
    assert admin.client.get("/api/admin/pools/tools").json()["image_version"] == 2
    r = send(admin, "POST", "/api/admin/images/guest/trial", {"pool": "tools", "version": None})
    assert r.status_code == 200
    assert admin.client.get("/api/admin/pools/tools").json()["image_version"] is None

    refused(send(admin, "POST", "/api/admin/images/guest/release", {"version": 7}), 404,
            "not_found", "no version 7")
    refused(send(admin, "POST", "/api/admin/images/guest/release", {"version": "2"}), 400,
            "invalid", "version: a version number")
    refused(send(admin, "POST", "/api/admin/images/nothing/release", {"version": 1}), 404,
            "not_found", "no such image: nothing")
    refused(send(admin, "POST", "/api/admin/images/guest/trial", {"pool": "nowhere",
                                                                  "version": 1}),
            404, "not_found", "no such pool")
    refused(send(admin, "POST", "/api/admin/images/guest/trial", {"pool": "tools"}), 400,
            "invalid", "pool and version")


def test_hosts_are_added_and_put_in_maintenance(fake: FakeHostBroker) -> None:
    admin = fake.broker.login("zhaoliu")
    wait_for(lambda: bool(admin.client.get("/api/admin/hosts").json()["hosts"]), 10,
             "the fake host registered")
    [host] = admin.client.get("/api/admin/hosts").json()["hosts"]
    assert host["status"] == "up" and host["memory_mib"] > 0
    name = host["name"]

    r = send(admin, "POST", "/api/admin/hosts", {
        "uri": "qemu+tcp://10.0.0.12/system", "name": "host-2",
        "graphics_listen": "10.0.0.12"})
    assert r.status_code == 201, r.text
    names = [h["name"] for h in admin.client.get("/api/admin/hosts").json()["hosts"]]
    assert "host-2" in names
    refused(send(admin, "POST", "/api/admin/hosts", {
        "uri": "10.0.0.13", "name": "host-3", "graphics_listen": "10.0.0.13"}), 400,
        "invalid", "a libvirt URI")
    refused(send(admin, "POST", "/api/admin/hosts", {"uri": "qemu:///system"}), 400,
            "invalid", "name: a text (needed)")

    r = send(admin, "POST", f"/api/admin/hosts/{name}/maintenance", {"mode": "on"})
    assert r.status_code == 200 and r.json()["maintenance"] is True, r.text
    alerts = admin.client.get("/api/admin/dashboard").json()["alerts"]
    assert {"kind": "host_maintenance", "target": name, "detail": ""} in alerts
    r = send(admin, "POST", f"/api/admin/hosts/{name}/maintenance", {"mode": "off"})
    assert r.json()["maintenance"] is False
    r = send(admin, "POST", f"/api/admin/hosts/{name}/maintenance", {"mode": "drain"})
    assert r.status_code == 200 and r.json()["moves"] is not None, r.text
    assert [a.action for a in fake.broker.audit() if a.action.startswith("host-")] == [
        "host-add", "host-maintenance", "host-maintenance", "host-drain"]
    refused(send(admin, "POST", "/api/admin/hosts/nowhere/maintenance", {"mode": "on"}),
            404, "not_found", "no such host: nowhere")
    refused(send(admin, "POST", f"/api/admin/hosts/{name}/maintenance", {"mode": "up"}),
            400, "invalid", "mode: one of on, off, drain")


def test_desktops_are_listed_and_removed_with_confirmation(fake: FakeHostBroker) -> None:
    admin = fake.broker.login("zhaoliu")
    clerk = fake.broker.login("zhangsan")
    clerk.connect_when_ready("window")
    desktops = admin.client.get("/api/admin/desktops").json()["desktops"]
    [held] = [d for d in desktops if d["clerk"] == "zhangsan"]
    assert held["pool"] == "window" and held["state"] == "assigned" and held["host"]
    assert held["created_at"]

    refused(send(admin, "POST", f"/api/admin/desktops/{held['id']}/remove",
                 {"even_if_held": False}), 409, "conflict", "belongs to zhangsan")
    refused(send(admin, "POST", f"/api/admin/desktops/{held['id']}/remove", {}), 400,
            "invalid", "even_if_held")
    refused(send(admin, "POST", "/api/admin/desktops/nothing-0/remove",
                 {"even_if_held": True}), 404, "not_found", "no such desktop")
    r = send(admin, "POST", f"/api/admin/desktops/{held['id']}/remove",
             {"even_if_held": True})
    assert r.status_code == 200 and r.json()["held_by"] == "zhangsan", r.text
    [removed] = fake.broker.audit(action="desktop-remove")
    assert (removed.actor, removed.detail) == ("zhaoliu", "held by zhangsan")
    # the pool makes a fresh desktop in its place
    fake.broker.wait_ready("window")


def test_the_system_admin_reads_the_live_sessions(fake: FakeHostBroker) -> None:
    admin = fake.broker.login("zhaoliu")
    fake.broker.login("zhangsan").connect_when_ready("window")
    sessions = admin.client.get("/api/admin/sessions").json()["sessions"]
    by_user = {s["username"]: s for s in sessions}
    assert by_user["zhangsan"]["source"] == "127.0.0.1" and by_user["zhangsan"]["desktops"]
    assert by_user["zhaoliu"]["roles"] == ["sysadmin"]
    assert "handle" not in by_user["zhangsan"]  # ending one is the security admin's
    assert [a.actor for a in fake.broker.audit(action="sessions-read")] == ["zhaoliu"]


def test_the_import_folder_is_listed(broker_factory: BrokerFactory, fake_image: ImageDisk,
                                     tmp_path: Path) -> None:
    folder = tmp_path / "imports"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.qcow2").write_bytes(b"x")
    (folder / "sub" / "b.img").write_bytes(b"x")
    (folder / "out.img").symlink_to("/etc/hostname")  # a link out: not offered
    broker = start_with_fake_host(broker_factory, fake_image,
                                  image_import_dir=str(folder)).broker
    admin = broker.login("zhaoliu")
    assert admin.client.get("/api/admin/images/files").json() == {
        "files": ["a.qcow2", "sub/b.img"]}
