"""Migrations 0010-0011 on data: pools made before them get no network card (QEMU
user-mode networking would let their guests reach the host's loopback services), and
the downgrade gives back what was there."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine, inspect, text

from vdi.db import alembic_config

AT = datetime(2026, 12, 7, 9, 0, tzinfo=UTC).isoformat()


def test_pools_lose_user_mode_networking_and_get_it_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'vdi.sqlite3'}"
    cfg = alembic_config(url)
    command.upgrade(cfg, "0010")
    raw = create_engine(url)
    with raw.begin() as c:
        for pool_id, network in (("window", "user"), ("records", "network:depta")):
            c.execute(text(
                "INSERT INTO pools (id, display_name, kind, image, vcpus, memory_mib, "
                "min_ready, max_size, entitled_groups, created_at, hosts, network) VALUES "
                "(:id, 'w', 'floating', 'guest', 1, 256, 1, 2, '[]', :at, '[]', :net)"),
                {"id": pool_id, "at": AT, "net": network})
    command.upgrade(cfg, "0011")
    with raw.connect() as c:
        rows: dict[str, str] = {i: n for i, n in c.execute(text("SELECT id, network FROM pools"))}
    assert rows == {"window": "none", "records": "network:depta"}
    with raw.begin() as c:  # a pool made after it: no network card unless given one
        c.execute(text(
            "INSERT INTO pools (id, display_name, kind, image, vcpus, memory_mib, min_ready, "
            "max_size, entitled_groups, created_at, hosts) VALUES ('new', 'n', 'floating', "
            "'guest', 1, 256, 1, 2, '[]', :at, '[]')"), {"at": AT})
        assert c.execute(text("SELECT network FROM pools WHERE id = 'new'")).scalar_one() \
            == "none"
    assert "image_imports" in inspect(raw).get_table_names()
    command.downgrade(cfg, "0009")
    inspector = inspect(raw)
    assert not {"image_imports", "waiters", "networks"} & set(inspector.get_table_names())
    assert "network" not in {col["name"] for col in inspector.get_columns("pools")}
    raw.dispose()
