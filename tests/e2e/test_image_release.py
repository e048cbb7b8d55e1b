"""Publishing a new image version and rolling it back with a desktop in use, on real
libvirtd guests and the running broker: spares move at once, the desktop in use when its
clerk logs off; each guest really runs the version it is recorded with (its running
domain's disk is a clone of that build's volume, whose name carries the build's digest)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from defusedxml.ElementTree import fromstring as parse_xml

from tests.e2e.conftest import PREFIX, REPO, Broker
from tests.e2e.test_clerk_desktop import serial_log, wait_for_text

pytestmark = pytest.mark.real

GROUP = "cn=it-ops,ou=groups,dc=district,dc=example"  # zhaoliu only
USER = "zhaoliu"
POOL = "kv"


def rows(broker: Broker) -> dict[str, list[str]]:
    return {r[0]: r for r in broker.desktops() if r[0].startswith(POOL + "-")}


def wait_rows(broker: Broker, what: str, check: object, timeout_s: float = 150) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check(rows(broker)):  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} not within {timeout_s} s: {rows(broker)}\n"
                         f"{broker.log.read_text()[-3000:]}")


def build_variant(tmp: Path, marker: str) -> Path:
    """The guest disk grown by 1 MiB holding `marker` after its partitions: another build
    (another digest) that boots as before."""
    out = tmp / f"{marker}.qcow2"
    shutil.copyfile(REPO / "var" / "guest" / "bios.qcow2", out)
    info = subprocess.run(["qemu-img", "info", "--output=json", "-f", "qcow2", str(out)],
                          check=True, capture_output=True, text=True).stdout
    size = int(info.split('"virtual-size":', 1)[1].split(",", 1)[0])
    subprocess.run(["qemu-img", "resize", "-q", "-f", "qcow2", str(out), str(size + 2**20)],
                   check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -q -P 0x5a {size} 64k", str(out)],
                   check=True, capture_output=True)
    return out


def backing_volume(desktop_id: str) -> str:
    """The image volume the running desktop's disk is a clone of."""
    live = subprocess.run(["virsh", "-c", "qemu:///system", "dumpxml", PREFIX + desktop_id],
                          check=True, capture_output=True, text=True).stdout
    source = parse_xml(live).find("./devices/disk[@device='disk']/backingStore/source")
    assert source is not None, live
    return Path(source.get("file", "")).name


def booted_with(desktop_id: str, version: str) -> bool:
    """The guest booted (VDI-READY on its serial log) from that version's volume."""
    return wait_for_text(serial_log(PREFIX + desktop_id), "VDI-READY", 90) and (
        backing_volume(desktop_id).startswith(f"demo-{version}-"))


def test_release_and_rollback_with_a_desktop_in_use(broker: Broker, tmp_path: Path) -> None:
    broker.vdi("pool-set", POOL, "--name", "release test", "--image", "demo",
               "--min-ready", "1", "--max-size", "3", "--group", GROUP)
    wait_rows(broker, "a ready spare", lambda r: any(v[1] == "ready" for v in r.values()))
    released = broker.vdi("images")
    v1 = next(line.split("\t")[1] for line in released.splitlines() if "released" in line)
    with httpx.Client(base_url=broker.url, headers={"Origin": broker.url}, timeout=30) as c:
        signed = c.post("/api/session", json={"username": USER, "password": "demo2026"})
        assert signed.status_code == 200, signed.text
        csrf = signed.json()["csrf"]
        r = c.post(f"/api/pools/{POOL}/connect", headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200, r.text
        in_use = r.json()["desktop"]
        wait_rows(broker, "a spare besides the desktop in use",
                  lambda r: any(v[1] == "ready" for k, v in r.items() if k != in_use))

        # a new build is published and released: the spares are replaced at once
        out = broker.vdi("image-import", "demo", str(build_variant(tmp_path, "b2")))
        v2 = "v" + out.split(" v", 1)[1].split(":", 1)[0]
        assert v2 != v1 and f"image demo {v2} released" in out
        wait_rows(broker, f"spares on {v2}", lambda r: all(
            v[4] == v2 and v[1] == "ready" for k, v in r.items() if k != in_use))
        spares = [k for k in rows(broker) if k != in_use]
        assert spares and all(booted_with(k, v2) for k in spares)
        # the clerk's desktop is left alone while in use
        assert rows(broker)[in_use][1:3] == ["assigned", USER]
        assert rows(broker)[in_use][4] == v1
        assert backing_volume(in_use).startswith(f"demo-{v1}-")

        # the clerk logs off: their desktop comes back on the new version
        assert c.post(f"/api/pools/{POOL}/logoff", headers={"X-CSRF-Token": csrf}).json()[
            "reverted"] is True
        wait_rows(broker, f"the logged-off desktop on {v2}",
                  lambda r: r[in_use][1] == "ready" and r[in_use][4] == v2)
        assert booted_with(in_use, v2)

        # rolled back: everything returns to the version before
        out = broker.vdi("image-rollback", "demo")
        assert f"from {v2} to {v1}" in out
        wait_rows(broker, f"all on {v1} again", lambda r: all(
            v[4] == v1 and v[1] == "ready" for v in r.values()))
        assert all(booted_with(k, v1) for k in rows(broker))
