"""pools.seed: each desktop's NoCloud seed, read back with pycdlib as a guest's
cloud-init (or cloudbase-init) would find it: volume label, files, values."""

from __future__ import annotations

import io

import pycdlib
import pytest

from pools.seed import HOSTNAME_MAX, desktop_hostname, nocloud_seed


def files_of(iso_bytes: bytes) -> tuple[str, dict[str, str]]:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(iso_bytes))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        out: dict[str, str] = {}
        for name in ("meta-data", "user-data"):
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path=f"/{name}")
            out[name] = buf.getvalue().decode()
        return label, out
    finally:
        iso.close()


def test_the_seed_names_the_desktop_and_carries_the_pools_data() -> None:
    user_data = "#cloud-config\nwrite_files:\n- path: /etc/motd\n  content: 东街窗口\n"
    label, files = files_of(nocloud_seed("window-1a2b3c4d", "window-1a2b3c4d", user_data))
    assert label == "cidata"
    assert files["meta-data"] == ('instance-id: "window-1a2b3c4d"\n'
                                  'local-hostname: "window-1a2b3c4d"\n')
    assert files["user-data"] == user_data
    _, empty = files_of(nocloud_seed("d", "d"))
    assert empty["user-data"] == "#cloud-config\n"


def test_values_cannot_break_out_of_the_meta_data() -> None:
    _, files = files_of(nocloud_seed('x"\nlocal-hostname: evil', "h"))
    lines = files["meta-data"].splitlines()
    assert len(lines) == 2 and lines[1] == 'local-hostname: "h"'


@pytest.mark.parametrize("desktop_id, hostname", [
    ("window-db14d27a", "window-db14d27a"),
    ("records-1a2b3c4d", "record-1a2b3c4d"),
    ("a-very-long-pool-name-for-dept-7-1a2b3c4d", "a-very-1a2b3c4d"),
    ("东街-1a2b3c4d", "1a2b3c4d"),
    ("--x--", "x"),
])
def test_hostnames_fit_a_windows_computer_name(desktop_id: str, hostname: str) -> None:
    assert desktop_hostname(desktop_id) == hostname
    assert len(hostname) <= HOSTNAME_MAX
