"""The `vdi` command's admin verbs: hosts, maintenance and drain, image releases."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pools.hosts import HostStatus
from pools.jobs.queue import JobKind
from vdi import cli
from vdi.cli import main
from vdi.db import make_engine, session_factory
from vdi.domain import DesktopState, utc_now
from vdi.models import AuditRow, DesktopRow, HostRow, ImageRow, JobRow, PoolRow


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("VDI_"):
            monkeypatch.delenv(name)
    path = tmp_path / "vdi.toml"
    path.write_text(f'state_dir = "{tmp_path}"\n', encoding="utf-8")
    assert main(["--config", str(path), "migrate"]) == 0
    return path


def vdi(config: Path, *args: str) -> int:
    return main(["--config", str(config), *args])


def database(config: Path) -> str:
    return f"sqlite:///{(config.parent / 'vdi.sqlite3').resolve()}"


def seed_dedicated_desktop(config: Path, host_uri: str) -> sessionmaker[Session]:
    """Pool `own` (dedicated) and its desktop `own-1`, held by lisi on host_uri."""
    db = session_factory(make_engine(database(config)))
    now = utc_now()
    with db.begin() as s:
        s.add(PoolRow(id="own", display_name="Own", kind="dedicated", image="demo", vcpus=1,
                      memory_mib=128, min_ready=0, max_size=2, entitled_groups=[],
                      created_at=now, hosts=[]))
        s.flush()  # the pool first: the desktop refers to it
        s.add(DesktopRow(id="own-1", pool_id="own", state=DesktopState.ASSIGNED.value,
                         host_uri=host_uri, domain_name="vdi-own-1", image_version=1,
                         assigned_user="lisi", created_at=now, updated_at=now))
    return db


def test_hosts_are_added_listed_and_refused_with_a_reason(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert vdi(config, "host-add", "qemu+tcp://10.77.0.11/system", "--name", "h1",
               "--graphics-listen", "10.77.0.11", "--shared-storage") == 0
    assert vdi(config, "host-add", "not-a-uri", "--name", "h2",
               "--graphics-listen", "x") == 2
    assert "libvirt URI" in capsys.readouterr().err
    assert vdi(config, "host-add", "qemu+tcp://10.77.0.12/system", "--name", "h1",
               "--graphics-listen", "10.77.0.12") == 2
    assert "taken" in capsys.readouterr().err
    assert vdi(config, "hosts") == 0
    out = capsys.readouterr().out
    assert "h1\tunknown\tshared" in out and "qemu+tcp://10.77.0.11/system" in out
    assert vdi(config, "host-maintenance", "nope", "on") == 2
    assert "no such host" in capsys.readouterr().err


def test_drain_puts_the_host_in_maintenance_and_asks_for_the_moves(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = "qemu+tcp://10.77.0.11/system"
    assert vdi(config, "host-add", uri, "--name", "h1", "--graphics-listen", "10.77.0.11",
               "--shared-storage") == 0
    db = seed_dedicated_desktop(config, uri)
    with db.begin() as s:
        row = s.get(HostRow, uri)
        assert row is not None
        row.status = HostStatus.UP.value
    assert vdi(config, "host-drain", "h1") == 0
    assert "1 dedicated desktop(s) to live-migrate" in capsys.readouterr().out
    with db() as s:
        host = s.get(HostRow, uri)
        assert host is not None and host.maintenance
        assert [(j.desktop_id, j.kind) for j in s.scalars(select(JobRow))] == [
            ("own-1", JobKind.MIGRATE.value)]
        actions = [a.action for a in s.scalars(select(AuditRow))]
    assert "host-drain" in actions
    assert vdi(config, "host-maintenance", "h1", "off") == 0
    with db() as s:
        host = s.get(HostRow, uri)
        assert host is not None and not host.maintenance


def test_release_and_rollback_from_the_command_line(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = session_factory(make_engine(database(config)))
    with db.begin() as s:
        for v in (1, 2):
            s.add(ImageRow(id="demo", host_uri="qemu:///system", version=v, disk_path="d",
                           disk_bytes=1, digest=str(v), published_at=utc_now()))
    assert vdi(config, "image-release", "demo", "3") == 2
    assert "no published version 3" in capsys.readouterr().err
    assert vdi(config, "image-release", "demo", "2") == 0
    assert vdi(config, "image-rollback", "demo") == 0
    assert "rolled back from v2 to v1" in capsys.readouterr().out
    assert vdi(config, "image-rollback", "demo") == 2
    assert "no version older than 1" in capsys.readouterr().err
    assert vdi(config, "images") == 0
    out = capsys.readouterr().out
    # versions recorded without their import (no traits) show '?'
    assert "demo\tv1\t?\tqemu:///system" in out and "released" in out.splitlines()[0]


def test_desktop_remove_asks_before_deleting_a_users_desktop(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = seed_dedicated_desktop(config, "qemu:///system")
    assert vdi(config, "desktop-remove", "nope") == 2
    assert "no such desktop" in capsys.readouterr().err
    assert vdi(config, "desktop-remove", "own-1") == 2
    assert "belongs to lisi" in capsys.readouterr().err
    with db() as s:
        assert not list(s.scalars(select(JobRow)))  # nothing happened
    assert vdi(config, "desktop-remove", "own-1", "--yes") == 0
    with db() as s:
        row = s.get(DesktopRow, "own-1")
        assert row is not None and row.state == "reclaiming" and row.assigned_user is None
        assert [(j.desktop_id, j.kind) for j in s.scalars(select(JobRow))] == [
            ("own-1", JobKind.REMOVE.value)]
        assert "desktop-remove" in [a.action for a in s.scalars(select(AuditRow))]


def test_pool_set_changes_only_what_it_is_told(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert vdi(config, "pool-set", "own", "--min-ready", "1") == 2
    assert "--name and --image are needed" in capsys.readouterr().err
    assert vdi(config, "pool-set", "own", "--name", "Own", "--image", "demo", "--kind",
               "dedicated", "--group", "cn=a", "--image-version", "3") == 0
    assert vdi(config, "pool-set", "own", "--min-ready", "2") == 0  # no --kind: still dedicated
    db = session_factory(make_engine(database(config)))
    with db() as s:
        row = s.get(PoolRow, "own")
        assert row is not None and (row.kind, row.min_ready, row.entitled_groups,
                                    row.image_version) == ("dedicated", 2, ["cn=a"], 3)
    assert vdi(config, "pool-set", "own", "--image-version", "released") == 0
    assert vdi(config, "pool-set", "own", "--image-version", "latest") == 2
    now = utc_now()
    with db.begin() as s:
        s.add(DesktopRow(id="own-1", pool_id="own", state=DesktopState.ASSIGNED.value,
                         host_uri="qemu:///system", domain_name="vdi-own-1", image_version=1,
                         assigned_user="lisi", created_at=now, updated_at=now))
    capsys.readouterr()
    assert vdi(config, "pool-set", "own", "--kind", "floating") == 2
    assert "cannot change from dedicated to floating" in capsys.readouterr().err
    with db() as s:
        row = s.get(PoolRow, "own")
        assert row is not None and row.kind == "dedicated" and row.image_version is None


def test_pool_policy_is_checked_whole_then_stored_and_shown(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert vdi(config, "pool-set", "own", "--name", "Own", "--image", "demo", "--kind",
               "dedicated", "--max-size", "3") == 0
    policy = tmp_path / "own.toml"
    policy.write_text('[shifts.office]\nidle_action = "log_off"\n', encoding="utf-8")
    capsys.readouterr()
    assert vdi(config, "pool-policy", "own", str(policy)) == 2  # never revert a dedicated one
    assert "dedicated pool's desktops can only be" in capsys.readouterr().err
    assert vdi(config, "pool-policy", "nope", str(policy)) == 2
    assert "no such pool" in capsys.readouterr().err
    policy.write_text('[calendar]\nopens = "08:00"\ncloses = "18:00"\n\n'
                      '[shifts.after_hours]\nidle_warn_after_s = 600\n'
                      'idle_action = "shut_down"\n\n'
                      '[spares]\nlevels = [{ days = "working", at = "07:45", min_ready = 3 }]\n',
                      encoding="utf-8")
    assert vdi(config, "pool-policy", "own", str(policy)) == 0
    db = session_factory(make_engine(database(config)))
    with db() as s:
        row = s.get(PoolRow, "own")
        assert row is not None and row.reclaim_policy and row.spare_schedule
        assert row.reclaim_policy["calendar"]["opens"] == "08:00"
        assert row.reclaim_policy["shifts"]["after_hours"]["idle_action"] == "shut_down"
        assert row.spare_schedule["levels"][0]["min_ready"] == 3
        audit = s.scalars(select(AuditRow).where(AuditRow.action == "pool-policy")).one()
        assert audit.target == "own"
    capsys.readouterr()
    assert vdi(config, "pool-policy", "own") == 0
    shown = capsys.readouterr().out
    assert '"idle_action": "shut_down"' in shown and '"opens": "08:00"' in shown
    assert vdi(config, "reclaims", "--pool", "own") == 0
    assert capsys.readouterr().out == ""  # nothing taken back yet
    # the level shown is the one of the moment the command runs: a Monday after 07:45
    # in the pool's time zone (Asia/Shanghai, the default), then a Sunday
    monkeypatch.setattr(cli, "utc_now", lambda: datetime(2026, 1, 5, 0, 0, tzinfo=UTC))
    assert vdi(config, "pools") == 0
    [line] = capsys.readouterr().out.splitlines()
    assert line.endswith("\tspares now: 3 (schedule: 3 from 07:45 on working days)"), line
    monkeypatch.setattr(cli, "utc_now", lambda: datetime(2026, 1, 4, 0, 0, tzinfo=UTC))
    assert vdi(config, "pools") == 0
    [line] = capsys.readouterr().out.splitlines()
    assert line.endswith("\tspares now: 1 (the pool's min_ready (1))"), line
