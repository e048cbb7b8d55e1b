"""The broker process of the tunnel benchmark: the real app, in uvicorn, in its own process.

`vdi.wiring.build_app` with the options `vdi serve` uses (`vdi.serve.server_options`), a
SQLite database, the real slapd the benchmark started (settings passed as JSON), the
pool worker running, and one host: a `FakeHypervisor` whose desktops' VNC endpoint is
the benchmark's fake desktop. The fake host writes each console password the broker
sets to `--password-file`, where the fake desktop reads it to check the broker's
DES answer - the only shortcut against a real QEMU.

Run as `python -m bench.tunnel_broker --workdir D --port P --vnc-port V
--password-file F --ldap JSON --staff-group DN`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import uvicorn

from pools.fake_hypervisor import FakeHypervisor
from pools.hypervisor import ImageDisk, file_digest
from pools.images import ImageStore
from vdi.catalog import Catalog
from vdi.db import make_engine, migrate, session_factory
from vdi.domain import Firmware, ImageTraits, OsFamily, Pool, PoolKind
from vdi.serve import server_options
from vdi.settings import Settings, load_settings
from vdi.wiring import build_app

HOST_URI = "fake:///bench-tunnel"
POOL_ID = "bench"
IMAGE_ID = "bench-image"


class BenchHost(FakeHypervisor):
    """Every desktop's console is the fake desktop; passwords go to a file it reads."""

    def __init__(self, vnc_port: int, password_file: Path) -> None:
        super().__init__(HOST_URI)
        self._vnc_port = vnc_port
        self._password_file = password_file

    def _free_port(self) -> int:
        return self._vnc_port

    def set_console_password(self, name: str, password: str, valid_s: int) -> None:
        super().set_console_password(name, password, valid_s)
        partial = self._password_file.with_suffix(".partial")
        partial.write_text(password, encoding="ascii")
        partial.replace(self._password_file)  # atomic: the reader never sees half of it


def bench_settings(workdir: Path, port: int, ldap: dict[str, Any], staff_group: str) -> Settings:
    return load_settings(environ={}, **{
        **ldap,
        "state_dir": workdir,
        "database_url": f"sqlite:///{workdir / 'vdi.sqlite3'}",
        "public_url": f"http://127.0.0.1:{port}",
        "listen_host": "127.0.0.1",
        "listen_port": port,
        "role_staff_groups": (staff_group,),
        "libvirt_uri": HOST_URI,
        "domain_prefix": "vdib-",
        "max_tunnels_per_user": 10_000,  # one user opens every tunnel of the benchmark
    })


def prepare(settings: Settings, host: BenchHost, workdir: Path, staff_group: str) -> None:
    """Publish the (fake) image and save the pool, before the app starts."""
    disk = workdir / "image.qcow2"  # the fake host reads no more than that it exists
    disk.write_bytes(b"QFI\xfb" + (3).to_bytes(4, "big") + bytes(16) + (1 << 30).to_bytes(8, "big"))
    fake_image = ImageDisk(path=disk, digest=file_digest(disk), disk_bytes=1 << 30,
                           traits=ImageTraits(Firmware.BIOS, OsFamily.LINUX))
    url = settings.effective_database_url
    migrate(url)
    engine = make_engine(url)
    try:
        db = session_factory(engine)
        ImageStore(db).publish(host, IMAGE_ID, fake_image)
        Catalog(db).save_pool(Pool(id=POOL_ID, display_name="Bench", kind=PoolKind.FLOATING,
                                   image=IMAGE_ID, vcpus=1, memory_mib=256, min_ready=1,
                                   max_size=1, entitled_groups=(staff_group,)))
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tunnel_broker")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--vnc-port", type=int, required=True)
    parser.add_argument("--password-file", type=Path, required=True,
                        help="where the fake host writes each console password")
    parser.add_argument("--ldap", required=True, help="slapd settings as a JSON object")
    parser.add_argument("--staff-group", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.workdir.mkdir(parents=True, exist_ok=True)
    settings = bench_settings(args.workdir, args.port, json.loads(args.ldap), args.staff_group)
    host = BenchHost(args.vnc_port, args.password_file)
    prepare(settings, host, args.workdir, args.staff_group)
    app = build_app(settings, hosts={HOST_URI: host})
    uvicorn.run(app, **server_options(settings), log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
