"""Migration 0009: images become whole disks. Records of kernel-booted images cannot boot
as disks and go (pools wait for an imported version); pools get a boot timeout and
secure boot; the downgrade gives the columns back."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine, inspect, text

from pools.hypervisor import ImageDisk
from pools.images import ImageStore
from vdi.db import alembic_config, make_engine, session_factory
from vdi.domain import Firmware, ImageTraits, OsFamily

AT = datetime(2026, 12, 7, 9, 0, tzinfo=UTC).isoformat()


def test_kernel_images_go_pools_get_boot_settings_and_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'vdi.sqlite3'}"
    cfg = alembic_config(url)
    command.upgrade(cfg, "0008")
    raw = create_engine(url)
    with raw.begin() as c:
        c.execute(text(
            "INSERT INTO pools (id, display_name, kind, image, vcpus, memory_mib, min_ready, "
            "max_size, entitled_groups, created_at, hosts) VALUES ('window', 'w', 'floating', "
            "'guest', 1, 256, 1, 2, '[]', :at, '[]')"), {"at": AT})
        c.execute(text(
            "INSERT INTO images (id, host_uri, version, disk_path, kernel_path, initrd_path, "
            "cmdline, disk_bytes, digest, published_at) VALUES ('guest', 'qemu:///system', 1, "
            "'/d', '/k', '/i', 'console=ttyS0', 1, 'x', :at)"), {"at": AT})
        c.execute(text(
            "INSERT INTO image_releases (image_id, version, released_at, released_by) "
            "VALUES ('guest', 1, :at, 'cli')"), {"at": AT})
        c.execute(text(
            "INSERT INTO desktops (id, pool_id, state, host_uri, domain_name, image_version, "
            "created_at, updated_at, power) VALUES ('d1', 'window', 'ready', "
            "'qemu:///system', 'vdi-d1', 1, :at, :at, 'on')"), {"at": AT})
    command.upgrade(cfg, "0009")
    engine = make_engine(url)
    try:
        with engine.connect() as c:  # read as 0009 holds it (the models are newer)
            assert tuple(c.execute(text(
                "SELECT boot_timeout_s, secure_boot FROM pools")).one()) == (300, False)
            assert c.execute(text("SELECT count(*) FROM images")).scalar_one() == 0
            assert c.execute(text("SELECT count(*) FROM image_releases")).scalar_one() == 0
            assert c.execute(text("SELECT count(*) FROM image_versions")).scalar_one() == 0

        # a build imported now gets a version above the desktops made from the old one
        # (v1 here), so their spares are remade on it
        disk = tmp_path / "d.qcow2"
        disk.write_bytes(b"QFI\xfb")
        version = ImageStore(session_factory(engine)).record_version(
            "guest", ImageDisk(disk, "f" * 64, 1, ImageTraits(Firmware.BIOS, OsFamily.LINUX)),
            str(disk), "qcow2", "test", 4)
        assert version == 2
        columns = {col["name"] for col in inspect(engine).get_columns("images")}
        assert not columns & {"kernel_path", "initrd_path", "cmdline"}
    finally:
        engine.dispose()
    command.downgrade(cfg, "0008")
    inspector = inspect(raw)
    assert {"kernel_path", "initrd_path", "cmdline"} <= {
        col["name"] for col in inspector.get_columns("images")}
    assert "boot_timeout_s" not in {col["name"] for col in inspector.get_columns("pools")}
    assert "image_versions" not in inspector.get_table_names()
    raw.dispose()
