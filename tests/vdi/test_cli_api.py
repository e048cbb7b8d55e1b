"""The `vdi` admin commands through the broker's API with a personal API token: the real
`vdi` command (a process of its own, no database or settings of the broker) against a
running broker (real slapd, fake host, real qemu-img): `audit verify`, `audit export`,
`image-import` following the import's progress, `status`; `vdi login` keeping the token
in a file only its owner reads, and `vdi logout --revoke`; and the client's messages
for a broker it cannot reach, a token refused, an unsafe address or file."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.ldap_server import SlapdServer, free_loopback_port
from pools.fake_hypervisor import FakeHypervisor
from tests.web.conftest import (
    RunningBroker,
    SignedIn,
    start_broker,
    window_pool,
    write_fake_image,
)
from vdi.api_client import (
    ApiClient,
    ApiConfig,
    ApiError,
    Request,
    Response,
    check_url,
    load_config,
    save_config,
)

REPO = Path(__file__).resolve().parents[2]
VDI = str(REPO / ".venv" / "bin" / "vdi")


@pytest.fixture(scope="module")
def slapd() -> Iterator[SlapdServer]:
    with SlapdServer() as server:
        yield server


@pytest.fixture
def broker(tmp_path: Path, slapd: SlapdServer) -> Iterator[RunningBroker]:
    folder = tmp_path / "imports"
    folder.mkdir()
    host = FakeHypervisor("fake:///cli-api-tests")
    b = start_broker(tmp_path / "broker", slapd, hosts={host.uri: host},
                     libvirt_uri=host.uri, image_import_dir=str(folder))
    try:
        b.publish_image(host, "guest", write_fake_image(tmp_path / "image"))
        yield b
    finally:
        b.stop()


def token_of(me: SignedIn) -> str:
    r = me.client.post("/api/tokens", json={"name": "vdi cli", "days": 7},
                       headers={"X-CSRF-Token": me.csrf})
    assert r.status_code == 201, r.text
    secret: str = r.json()["secret"]
    return secret


def env_for(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of an admin's workstation: no settings or database of the
    broker's, this checkout's code, a config file of the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VDI_")}
    env.update({"PYTHONPATH": str(REPO), "VDI_API_CONFIG": str(tmp / "cfg" / "api.json"),
                "LANG": "C.UTF-8", **extra})
    return env


def vdi(env: dict[str, str], *args: str, stdin: str | None = None, cwd: Path | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VDI, *args], env=env, input=stdin, capture_output=True, text=True,
                          timeout=120, check=False, cwd=cwd)


def test_audit_verify_and_export_through_the_api(broker: RunningBroker, tmp_path: Path
                                                 ) -> None:
    work = tmp_path / "workstation"
    work.mkdir()
    env = env_for(tmp_path, VDI_API_URL=broker.url,
                  VDI_API_TOKEN=token_of(broker.login("zhengshi")))
    verified = vdi(env, "audit", "verify", cwd=work)
    assert verified.returncode == 0, verified.stderr
    assert "chain intact; last #" in verified.stdout
    out = work / "audit.csv"
    exported = vdi(env, "audit", "export", "--days", "1", "--out", str(out), cwd=work)
    assert exported.returncode == 0, exported.stderr
    text = out.read_text(encoding="utf-8")
    assert text.startswith("\ufeff")
    rows = list(csv.DictReader(io.StringIO(text[1:])))
    assert ("zhengshi", "audit-verify") in {(r["actor"], r["action"]) for r in rows}
    assert f"{len(rows)} records written" in exported.stderr
    assert list(work.iterdir()) == [out]  # no database or state made on the workstation
    # what the broker recorded: the audit administrator, from the API, each time
    assert [(a.actor, a.source) for a in broker.audit(action="audit-export")] == [
        ("zhengshi", "127.0.0.1")]
    # the sysadmin's token is the sysadmin's roles: the trail is not theirs to read
    env["VDI_API_TOKEN"] = token_of(broker.login("zhaoliu"))
    refused = vdi(env, "audit", "verify", cwd=work)
    assert refused.returncode == 1 and "not allowed" in refused.stderr
    assert "forbidden" in refused.stderr


def test_image_import_and_status_through_the_api(broker: RunningBroker, tmp_path: Path
                                                 ) -> None:
    disk = Path(broker.settings.image_import_dir) / "district.img"
    with disk.open("wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["sfdisk", "-q", str(disk)], input="label: dos\nstart=2048, type=7\n",
                   text=True, check=True, capture_output=True)
    env = env_for(tmp_path, VDI_API_URL=broker.url,
                  VDI_API_TOKEN=token_of(broker.login("zhaoliu")))
    done = vdi(env, "image-import", "window10", "district.img")
    assert done.returncode == 0, done.stderr
    assert "image window10: v1 on " in done.stdout and "released" in done.stdout
    assert "100%" in done.stderr  # the progress, one line per stage (not a terminal)
    assert [v.version for v in broker.runtime.images.versions("window10")] == [1]
    path = vdi(env, "image-import", "x", str(disk))
    assert path.returncode == 2 and "import folder" in path.stderr
    bad = vdi(env, "image-import", "x", "nothing-here.img")
    assert bad.returncode == 1 and "bad_request" in bad.stderr
    broker.save_pool(window_pool(min_ready=0))
    status = vdi(env, "status")
    assert status.returncode == 0, status.stderr
    assert "\npool window\t窗口桌面\tmin_ready=0 max_size=3\tready=0" in status.stdout
    assert "\nhost local\tup\t0/16384 MiB" in status.stdout


def test_login_keeps_the_token_for_its_owner_only_and_logout_revokes_it(
        broker: RunningBroker, tmp_path: Path) -> None:
    env = env_for(tmp_path)
    secret = token_of(broker.login("zhengshi"))
    r = vdi(env, "login", broker.url, stdin=secret + "\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"signed in to {broker.url} as 郑十 (zhengshi), roles: "
                               "auditadmin; token 'vdi cli'")
    cfg = Path(env["VDI_API_CONFIG"])
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    assert stat.S_IMODE(cfg.parent.stat().st_mode) == 0o700
    assert secret not in r.stdout + r.stderr
    assert vdi(env, "audit", "verify").returncode == 0
    out = vdi(env, "logout", "--revoke")
    assert out.returncode == 0, out.stderr
    assert not cfg.exists()
    env.update(VDI_API_URL=broker.url, VDI_API_TOKEN=secret)
    refused = vdi(env, "audit", "verify")
    assert refused.returncode == 1
    assert "refused the API token" in refused.stderr and "token_revoked" in refused.stderr
    assert f"{broker.url}/tokens" in refused.stderr
    wrong = vdi(env_for(tmp_path), "login", broker.url, stdin="vdi_" + "Q" * 43 + "\n")
    assert wrong.returncode == 1 and "token_invalid" in wrong.stderr
    assert not cfg.exists()  # a token the broker refuses is not kept


def test_the_clients_messages(tmp_path: Path) -> None:
    with pytest.raises(ApiError, match="unencrypted"):
        check_url("http://10.1.2.3:8000")
    assert check_url("https://vdi.example/") == "https://vdi.example"
    assert check_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000"
    with pytest.raises(ApiError, match="both"):
        load_config({"VDI_API_URL": "https://vdi.example"})
    path = tmp_path / "cfg" / "api.json"
    assert load_config({"VDI_API_CONFIG": str(path)}) is None
    save_config(path, "https://vdi.example", "vdi_secret")
    loaded = load_config({"VDI_API_CONFIG": str(path)})
    assert loaded is not None and loaded.token == "vdi_secret"
    assert "vdi_secret" not in repr(loaded)
    path.chmod(0o644)
    with pytest.raises(ApiError, match="chmod 600"):
        load_config({"VDI_API_CONFIG": str(path)})

    def answer(status: int, body: dict[str, str]) -> ApiClient:
        def transport(request: Request) -> Response:
            assert request.headers["Authorization"] == "Bearer vdi_x"
            return Response(status, "application/json", json.dumps(body).encode())
        return ApiClient(ApiConfig("https://vdi.example", "vdi_x", "environment"),
                         transport=transport)

    with pytest.raises(ApiError, match=r"expired.*token_expired.*vdi.example/tokens.*"
                                       r"VDI_API_TOKEN") as e:
        answer(401, {"error": "token_expired", "message": "expired"}).get("/api/session")
    assert e.value.status == 401
    with pytest.raises(ApiError, match=r"not allowed: no \(forbidden\)"):
        answer(403, {"error": "forbidden", "message": "no"}).get("/api/admin/audit/verify")
    closed = ApiClient(ApiConfig(f"http://127.0.0.1:{free_loopback_port()}", "vdi_x", "t"))
    with pytest.raises(ApiError, match=r"cannot reach the broker at http://127\.0\.0\.1") as e:
        closed.get("/api/session")
    assert e.value.status == 0


def test_without_an_api_the_local_way_is_kept(tmp_path: Path) -> None:
    """No API configured: `vdi audit verify` reads the database itself, as on the
    broker's host (and `status`, which has no local way, says what it needs)."""
    env = env_for(tmp_path, VDI_STATE_DIR=str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    local = vdi(env, "audit", "verify")
    assert local.returncode == 0 and "chain intact" in local.stdout, local.stderr
    status = vdi(env, "status")
    assert status.returncode == 2 and "vdi login" in status.stderr


def test_the_admin_commands_through_the_api(broker: RunningBroker, tmp_path: Path) -> None:
    env = env_for(tmp_path, VDI_API_URL=broker.url,
                  VDI_API_TOKEN=token_of(broker.login("zhaoliu")))
    broker.save_pool(window_pool(min_ready=1, max_size=2))
    broker.wait_ready("window")
    [spare] = broker.desktops("window")
    removed = vdi(env, "desktop-remove", spare.id)
    assert removed.returncode == 0, removed.stderr
    assert f"desktop {spare.id}: removal queued" in removed.stdout

    on = vdi(env, "host-maintenance", "local", "on")
    assert on.returncode == 0, on.stderr
    assert on.stdout == "host local: maintenance on\n"
    drained = vdi(env, "host-drain", "local")
    assert drained.returncode == 0 and "spare(s) to remake elsewhere" in drained.stdout
    assert vdi(env, "host-maintenance", "local", "off").stdout == "host local: maintenance off\n"
    missing = vdi(env, "host-maintenance", "nowhere", "on")
    assert missing.returncode == 1 and "nowhere" in missing.stderr

    released = vdi(env, "image-release", "guest", "1")
    assert released.returncode == 0, released.stderr
    assert "image guest v1 released" in released.stdout
    nothing_older = vdi(env, "image-rollback", "guest")
    assert nothing_older.returncode == 1 and "conflict" in nothing_older.stderr
    # a pool made and changed from the workstation, user-data read from a file there
    seed = tmp_path / "join.yaml"
    seed.write_text("#cloud-config\nhostname: 东街-窗口\n", encoding="utf-8")
    made = vdi(env, "pool-set", "records", "--name", "档案室", "--image", "guest",
               "--kind", "dedicated", "--min-ready", "0", "--max-size", "2", "--group",
               "cn=window-staff,ou=groups,dc=district,dc=example", "--user-data", str(seed))
    assert made.returncode == 0, made.stderr
    assert made.stdout == "pool records created\n"
    saved = vdi(env, "pool-set", "records", "--max-size", "4", "--image-version", "1")
    assert saved.returncode == 0 and saved.stdout == "pool records saved\n", saved.stderr
    records = broker.runtime.catalog.pool("records")
    assert records is not None and (records.max_size, records.image_version) == (4, 1)
    assert records.user_data == "#cloud-config\nhostname: 东街-窗口\n"
    wrong = vdi(env, "pool-set", "records", "--office", "nowhere")
    assert wrong.returncode == 1 and "nowhere" in wrong.stderr
    # each as the administrator, from the API, on record
    actions = {(a.action, a.actor, a.source) for a in broker.audit()}
    for action in ("host-maintenance", "host-drain", "desktop-remove", "image-release",
                   "pool-set"):
        assert (action, "zhaoliu", "127.0.0.1") in actions, action
