"""Golden image import through the admin API (the admin console's path): an admin starts
an import of a file in the import folder and follows its percentage to the end; files
outside the folder are refused, whatever the path says; clerks and helpdesk may not.
Fake host, real slapd, real qemu-img."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from pools.hypervisor import ImageDisk
from tests.web.conftest import BrokerFactory, SignedIn, start_with_fake_host

pytestmark = pytest.mark.real


def wait_import(admin: SignedIn, status_url: str, bound_s: float = 120) -> dict[str, object]:
    seen: list[int] = []
    deadline = time.monotonic() + bound_s
    while True:
        st = admin.client.get(status_url).json()
        seen.append(int(st["percent"]))
        if st["state"] != "running":
            st["seen"] = seen
            return dict(st)
        assert time.monotonic() < deadline, st
        time.sleep(0.2)


def test_an_admin_imports_a_file_of_the_import_folder(
        broker_factory: BrokerFactory, fake_image: ImageDisk, tmp_path: Path) -> None:
    folder = tmp_path / "imports"
    folder.mkdir()
    disk = folder / "district.img"
    with disk.open("wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["sfdisk", "-q", str(disk)], input="label: dos\nstart=2048, type=7\n",
                   text=True, check=True, capture_output=True)
    broker = start_with_fake_host(broker_factory, fake_image,
                                  image_import_dir=str(folder)).broker
    admin = broker.login("zhaoliu")
    r = admin.client.post("/api/admin/images", headers={"X-CSRF-Token": admin.csrf},
                          json={"image": "window10", "file": "district.img"})
    assert r.status_code == 202, r.text
    st = wait_import(admin, r.json()["status"])
    assert st["state"] == "done" and st["percent"] == 100 and st["version"] == 1, st
    assert "released" in str(st["message"])
    imported = broker.runtime.images.versions("window10")
    assert [(v.version, v.traits.os_family.value) for v in imported] == [(1, "windows")]

    refusals = {"../district.img": 400, "/etc/passwd": 400, "nothing-here.img": 400,
                "link.img": 400}
    os.symlink("/etc/passwd", folder / "link.img")  # a link out of the folder
    for name, status in refusals.items():
        bad = admin.client.post("/api/admin/images", headers={"X-CSRF-Token": admin.csrf},
                                json={"image": "evil", "file": name})
        assert bad.status_code == status and bad.json()["error"] == "bad_request", (name, bad.text)
        assert "导入文件夹" in bad.json()["message"], bad.text
    assert broker.runtime.images.versions("evil") == []

    # a refused file is reported by the import itself
    (folder / "empty.qcow2").write_bytes(b"")
    r = admin.client.post("/api/admin/images", headers={"X-CSRF-Token": admin.csrf},
                          json={"image": "empty", "file": "empty.qcow2"})
    st = wait_import(admin, r.json()["status"])
    assert st["state"] == "failed" and "is empty" in str(st["message"]), st
    assert admin.client.get("/api/admin/images/imports/999").status_code == 404
