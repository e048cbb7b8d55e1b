"""`vdi serve --role`: the web process and the worker process apart, as a district runs
several web processes beside one worker. Real processes, real slapd and libvirtd, one
SQLite database. With the web process alone no desktop is ever made (a clerk hears
"being prepared"); once the worker process runs, it makes the spare and the web
process grants its console."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

from harness.ldap_server import DEMO_PASSWORD, SlapdServer, free_loopback_port
from tests.e2e.conftest import REPO, STAFF_GROUP, _broker_env, _destroy_test_domains
from tests.e2e.test_broker_killed import rows, vdi, wait_until

pytestmark = pytest.mark.real

PREFIX = "vdit-role-"


def serve(env: dict[str, str], role: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("a") as out:
        return subprocess.Popen([str(REPO / ".venv/bin/vdi"), "serve", "--role", role],
                                stdout=out, stderr=subprocess.STDOUT, env=env)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_the_web_and_the_worker_run_as_processes_of_their_own(tmp_path: Path) -> None:
    guest = REPO / "var" / "guest"
    subprocess.run([str(REPO / "deploy/guest/build-image.sh"), str(guest)], check=True,
                   capture_output=True)
    _destroy_test_domains(PREFIX)
    port = free_loopback_port()
    log = tmp_path / "broker.log"
    procs: list[subprocess.Popen[bytes]] = []
    with SlapdServer() as slapd:
        env = _broker_env(slapd, tmp_path, port, port, PREFIX)
        try:
            vdi(env, "migrate")
            vdi(env, "image-import", "demo", str(guest / "bios.qcow2"))
            vdi(env, "pool-set", "window", "--name", "窗口", "--image", "demo",
                "--min-ready", "1", "--max-size", "1", "--group", STAFF_GROUP)
            procs.append(serve(env, "web", log))
            url = f"http://127.0.0.1:{port}"
            wait_until("the web process to answer", lambda: _healthy(url), 60, log)
            with httpx.Client(base_url=url, headers={"Origin": url}, timeout=30) as c:
                me = c.post("/api/session",
                            json={"username": "zhangsan", "password": DEMO_PASSWORD})
                assert me.status_code == 200, me.text
                csrf = me.json()["csrf"]
                time.sleep(5)  # five worker intervals: nothing may be made meanwhile
                assert rows(env) == []
                waiting = c.post("/api/pools/window/connect", headers={"X-CSRF-Token": csrf})
                assert waiting.status_code == 503
                assert waiting.json()["error"] == "desktop_starting"
                assert rows(env) == []  # the web process made nothing itself

                procs.append(serve(env, "worker", log))
                wait_until("the worker process to make the spare",
                           lambda: [r[1] for r in rows(env)] == ["ready"], 120, log)
                got = c.post("/api/pools/window/connect", headers={"X-CSRF-Token": csrf})
                assert got.status_code == 200, got.text
                assert got.json()["console"].startswith("/console/")
                [desktop] = rows(env)
                assert desktop[1:3] == ["assigned", "zhangsan"]
            assert procs[1].poll() is None  # the worker keeps running on its own
        finally:
            for proc in procs:
                stop(proc)
            _destroy_test_domains(PREFIX)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
