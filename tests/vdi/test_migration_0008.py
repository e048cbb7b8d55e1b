"""Migration 0008 (consoles by kind) keeps the data: a desktop's VNC endpoint becomes its
console endpoint, a used token stays used, a job still to run keeps the endpoint its
create step recorded; and it runs back down the same way. SQLite here; the schema on
PostgreSQL is checked against the models in tests/broker/test_assignment_pg.py."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine, text

from vdi.db import alembic_config, make_engine

AT = datetime(2026, 12, 7, 9, 0, tzinfo=UTC).isoformat()


def test_console_columns_are_renamed_with_their_data_and_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'vdi.sqlite3'}"
    cfg = alembic_config(url)
    command.upgrade(cfg, "0007")
    raw = create_engine(url)
    with raw.begin() as c:
        c.execute(text(
            "INSERT INTO pools (id, display_name, kind, image, vcpus, memory_mib, min_ready, "
            "max_size, entitled_groups, created_at, hosts) VALUES ('window', 'w', 'floating', "
            "'guest', 1, 256, 1, 2, '[]', :at, '[]')"), {"at": AT})
        c.execute(text(
            "INSERT INTO desktops (id, pool_id, state, host_uri, domain_name, vnc_host, "
            "vnc_port, image_version, created_at, updated_at, power) VALUES ('d1', 'window', "
            "'ready', 'qemu:///system', 'vdi-d1', '10.0.0.5', 5907, 1, :at, :at, 'on')"),
            {"at": AT})
        c.execute(text(
            "INSERT INTO console_tokens (token_hash, username, session_hash, desktop_id, "
            "kind, expires_at, used_at) VALUES ('t1', 'clerk', 's', 'd1', 'vnc', :at, :at), "
            "('t2', 'clerk', 's', 'd1', 'vnc', :at, NULL)"), {"at": AT})
        c.execute(text(
            "INSERT INTO jobs (kind, desktop_id, state, step, attempts, not_before, "
            "created_at, updated_at, payload) VALUES ('provision', 'd1', 'running', "
            "'ready', 0, :at, :at, :at, :payload)"),
            {"at": AT, "payload": '{"version": 1, "vnc_host": "10.0.0.5", "vnc_port": 5907}'})
    command.upgrade(cfg, "0008")
    engine = make_engine(url)
    try:
        with engine.connect() as c:  # read as 0008 holds it (the models are newer)
            console = tuple(c.execute(text(
                "SELECT console_kind, console_host, console_port FROM desktops")).one())
        assert console == ("vnc", "10.0.0.5", 5907)
        with engine.connect() as c:  # the pool as 0008 holds it (the model is newer)
            assert c.execute(text("SELECT console_kind FROM pools")).scalar_one() == "vnc"
            tokens: dict[str, int] = {h: n for h, n in c.execute(text(
                "SELECT token_hash, uses FROM console_tokens WHERE channels = 1"))}
            payload = c.execute(text("SELECT payload FROM jobs")).scalar_one()
    finally:
        engine.dispose()
    assert tokens == {"t1": 1, "t2": 0}  # the used one stays used
    assert '"console_host": "10.0.0.5"' in payload and '"console_port": 5907' in payload
    assert "vnc_" not in payload
    command.downgrade(cfg, "0007")
    with raw.connect() as c:
        row = c.execute(text("SELECT vnc_host, vnc_port FROM desktops")).one()
        payload = c.execute(text("SELECT payload FROM jobs")).scalar_one()
    raw.dispose()
    assert tuple(row) == ("10.0.0.5", 5907)
    assert '"vnc_host": "10.0.0.5"' in payload and "console_" not in payload
