"""The broker process is killed (SIGKILL) after libvirt started a desktop's domain and
before the database recorded it. After a restart: the same desktop is finished, no
orphan domain is left, no second one made, and it is assigned once."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from harness.ldap_server import SlapdServer, free_loopback_port
from pools.libvirt.host import LibvirtHost
from tests.e2e.conftest import REPO, STAFF_GROUP, _broker_env

pytestmark = pytest.mark.real

PREFIX = "vdit-kill-"


def domains() -> list[str]:
    host = LibvirtHost("qemu:///system", storage_pool="vdi-test",
                       storage_dir=Path("/var/lib/libvirt/images/vdi-test"), domain_type="qemu")
    try:
        return sorted(d.name for d in host.list_desktops() if d.name.startswith(PREFIX))
    finally:
        host.close()


def remove_domains() -> None:
    host = LibvirtHost("qemu:///system", storage_pool="vdi-test",
                       storage_dir=Path("/var/lib/libvirt/images/vdi-test"), domain_type="qemu")
    try:
        for name in domains():
            host.destroy_desktop(name)
    finally:
        host.close()


def vdi(env: dict[str, str], *args: str) -> str:
    r = subprocess.run([str(REPO / ".venv/bin/vdi"), *args], env=env, capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 0, f"vdi {' '.join(args)}: {r.stderr[-2000:]}"
    return r.stdout


def rows(env: dict[str, str]) -> list[list[str]]:
    return [line.split("\t") for line in vdi(env, "desktops").splitlines() if line]


def wait_until(what: str, check: object, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.3)
    raise AssertionError(f"{what} not within {timeout_s} s\n{log.read_text()[-3000:]}")


def test_broker_killed_between_domain_start_and_commit(tmp_path: Path) -> None:
    guest = REPO / "var" / "guest"
    subprocess.run([str(REPO / "deploy/guest/build-image.sh"), str(guest)], check=True,
                   capture_output=True)
    remove_domains()
    port = free_loopback_port()
    log = tmp_path / "broker.log"
    with SlapdServer() as slapd:
        env = _broker_env(slapd, tmp_path, port, port)
        env.update({"VDI_DOMAIN_PREFIX": PREFIX, "VDI_JOB_LEASE_S": "3"})
        try:
            vdi(env, "migrate")
            vdi(env, "image-import", "demo", str(guest / "bios.qcow2"))
            vdi(env, "pool-set", "window", "--name", "窗口", "--image", "demo",
                "--min-ready", "1", "--max-size", "1", "--group", STAFF_GROUP)

            # 1. the broker starts the domain, then dies before recording it
            with log.open("w") as out:
                doomed = subprocess.Popen(
                    [str(REPO / ".venv/bin/vdi"), "serve"], stdout=out, stderr=subprocess.STDOUT,
                    env={**env, "VDI_FAILPOINT_KILL_AFTER_STEP": "create"})
            try:
                doomed.wait(90)
            except subprocess.TimeoutExpired:
                doomed.kill()
                raise AssertionError(f"no failpoint fired\n{log.read_text()[-3000:]}") from None
            assert doomed.returncode == -signal.SIGKILL
            [left] = rows(env)
            assert left[1] == "provisioning" and left[5] == "-"  # no console recorded
            assert domains() == [PREFIX + left[0]]  # but libvirt runs it

            # 2. restarted: the job's lease runs out and the same desktop is finished
            with log.open("a") as out:
                broker = subprocess.Popen([str(REPO / ".venv/bin/vdi"), "serve"], stdout=out,
                                          stderr=subprocess.STDOUT, env=env)
            try:
                wait_until("a ready desktop", lambda: [r[1] for r in rows(env)] == ["ready"],
                           60, log)
                [done] = rows(env)
                assert done[0] == left[0]
                assert domains() == [PREFIX + left[0]]  # no orphan, no second domain
                assert done[5].startswith("vnc://127.0.0.1:")
                port_recorded = int(done[5].rsplit(":", 1)[1])
                host = LibvirtHost("qemu:///system", storage_pool="vdi-test",
                                   storage_dir=Path("/var/lib/libvirt/images/vdi-test"))
                try:
                    assert host.console_endpoint(PREFIX + left[0]).port == port_recorded
                finally:
                    host.close()

                # 3. assigned once: the first clerk gets it, the second hears the pool is full
                answers = [connect(port, user) for user in ("zhangsan", "sunqi")]
                assert answers[0]["desktop"] == left[0]
                assert answers[1]["error"] == "pool_full"
                assert domains() == [PREFIX + left[0]]
            finally:
                broker.terminate()
                broker.wait(15)
        finally:
            remove_domains()


def connect(port: int, user: str) -> dict[str, object]:
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, headers={"Origin": url}, timeout=30) as c:
        r = c.post("/api/session", json={"username": user, "password": "demo2026"})
        assert r.status_code == 200, r.text
        answer = c.post("/api/pools/window/connect", headers={"X-CSRF-Token": r.json()["csrf"]})
        body = answer.json()
        assert isinstance(body, dict)
        return body

