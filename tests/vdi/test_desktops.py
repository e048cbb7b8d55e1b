"""The desktop state machine (vdi/desktops.py) on a real SQLite file: each transition
from every state (allowed or refused), the columns it sets, the rest left alone; each
compare-and-set refused when the row changed since it was read. And the rule that no
other module writes desktop rows."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session, sessionmaker

from vdi import desktops
from vdi.catalog import Catalog
from vdi.domain import ConsoleEndpoint, ConsoleKind, DesktopState, Pool, PoolKind, Power
from vdi.models import DesktopRow

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
OLD = NOW - timedelta(hours=1)
DEADLINE = NOW + timedelta(minutes=5)
HOST, OTHER_HOST = "fake://a/system", "fake://b/system"
ALL_STATES = frozenset(DesktopState)
IN_WORK = frozenset({DesktopState.PROVISIONING, DesktopState.RECLAIMING})
COLUMNS = [c.key for c in inspect(DesktopRow).column_attrs]
# a desktop with everything a clerk's day and a job's trouble leave on it
USED: dict[str, Any] = {
    "pool_id": "window", "host_uri": HOST, "domain_name": "vdi-d1", "image_version": 3,
    "assigned_user": "clerk1", "console_host": "127.0.0.1", "console_port": 5901,
    "error": "an old note", "created_at": OLD, "updated_at": OLD, "assigned_at": OLD,
    "last_input_at": OLD, "last_disconnect_at": OLD, "power": Power.ON.value,
    "console_since": OLD, "console_seen_at": OLD, "warned_at": OLD,
    "warning_deadline": OLD + timedelta(minutes=5), "kicked_at": OLD}
CLERK_GONE = {"assigned_user": None, "assigned_at": None, "last_input_at": None,
              "last_disconnect_at": None, "console_since": None, "console_seen_at": None,
              "warned_at": None, "warning_deadline": None, "kicked_at": None}
CONSOLE_GONE = {"console_since": None, "console_seen_at": None}
NO_WARNING = {"warned_at": None, "warning_deadline": None}
Call = Callable[[Session], object]


def read() -> desktops.AsRead:
    """The idle policy's view of the USED desktop while assigned."""
    return desktops.AsRead(desktop_id="d1", assigned_user="clerk1", power=Power.ON,
                           console_since=OLD, console_seen_at=OLD, last_disconnect_at=OLD,
                           last_input_at=OLD, warned_at=OLD)


@dataclass(frozen=True)
class Case:
    name: str
    call: Call
    allowed: frozenset[DesktopState]
    sets: dict[str, Any]
    given: dict[str, Any] = field(default_factory=dict)


ASSIGNED = frozenset({DesktopState.ASSIGNED})
CASES = [
    Case("mark_ready", lambda s: desktops.mark_ready(
        s, "d1", console=ConsoleEndpoint(ConsoleKind.SPICE, "10.0.0.2", 5999), image_version=4,
        now=NOW), IN_WORK,
        {"state": "ready", "console_kind": "spice", "console_host": "10.0.0.2",
         "console_port": 5999, "image_version": 4,
         "power": "on", "error": None, "updated_at": NOW, **CLERK_GONE},
        given={"power": Power.OFF.value}),
    Case("claim_spare", lambda s: desktops.claim_spare(s, "window", "clerk2", NOW),
         frozenset({DesktopState.READY}),
         {"state": "assigned", "assigned_user": "clerk2", "assigned_at": NOW,
          "updated_at": NOW, **{k: v for k, v in CLERK_GONE.items()
                                if k not in ("assigned_user", "assigned_at")}},
         given={"assigned_user": None}),
    Case("recall_spare", lambda s: desktops.recall_spare(s, "d1", NOW),
         frozenset({DesktopState.READY}), {"state": "reclaiming", "updated_at": NOW},
         given={"assigned_user": None}),
    Case("log_off", lambda s: desktops.log_off(s, "d1", "clerk1", NOW), ASSIGNED,
         {"state": "reclaiming", "assigned_user": None, "updated_at": NOW, **CONSOLE_GONE,
          **NO_WARNING}),
    Case("reclaim_on_host", lambda s: desktops.reclaim_on_host(
        s, "d1", state=DesktopState.READY, host_uri=HOST, now=NOW),
        frozenset({DesktopState.READY}),
        {"state": "reclaiming", "assigned_user": None, "updated_at": NOW, **CONSOLE_GONE,
         **NO_WARNING}),
    Case("start_removal", lambda s: desktops.start_removal(
        s, "d1", state=DesktopState.ERROR, owner="clerk1", now=NOW),
        frozenset({DesktopState.ERROR}),
        {"state": "reclaiming", "assigned_user": None, "updated_at": NOW, **CONSOLE_GONE,
         **NO_WARNING}),
    Case("mark_deleted", lambda s: desktops.mark_deleted(s, "d1", NOW),
         frozenset({DesktopState.RECLAIMING, DesktopState.ERROR}),
         {"state": "deleted", "console_host": None, "console_port": None,
          "updated_at": NOW, **CLERK_GONE}),
    Case("boot_failed", lambda s: desktops.boot_failed(s, "d1", "no agent", NOW), IN_WORK,
         {"state": "error", "error": "no agent", "updated_at": NOW, **CONSOLE_GONE},
         given={"assigned_user": None}),
    Case("mark_error", lambda s: desktops.mark_error(s, "d1", "disk full", NOW), IN_WORK,
         {"state": "error", "error": "disk full", "updated_at": NOW}),
    Case("note", lambda s: desktops.note(s, "d1", "host down", on_host=HOST),
         ALL_STATES - {DesktopState.DELETED}, {"error": "host down"}),
    Case("note_addresses", lambda s: desktops.note_addresses(s, "d1", ["10.0.2.15"]),
         ALL_STATES - {DesktopState.DELETED}, {"guest_addresses": "10.0.2.15"}),
    Case("clear_note", lambda s: desktops.clear_note(s, "d1", on_host=HOST), ALL_STATES,
         {"error": None}),
    Case("hold_for_move", lambda s: desktops.hold_for_move(
        s, "d1", state=DesktopState.ASSIGNED, host_uri=HOST, now=NOW), ASSIGNED,
        {"updated_at": NOW}),
    Case("move_host", lambda s: desktops.move_host(
        s, "d1", from_host=HOST, to_host=OTHER_HOST, now=NOW), IN_WORK,
        {"host_uri": OTHER_HOST, "updated_at": NOW}),
    Case("mark_running", lambda s: desktops.mark_running(
        s, "d1", host_uri=OTHER_HOST, console=ConsoleEndpoint(ConsoleKind.VNC, "10.0.0.3", 5902),
        now=NOW),
        frozenset({DesktopState.READY, DesktopState.ASSIGNED}),
        {"host_uri": OTHER_HOST, "console_kind": "vnc", "console_host": "10.0.0.3",
         "console_port": 5902, "power": "on",
         "error": None, "updated_at": NOW}, given={"power": Power.SUSPENDED.value}),
    Case("power_down_failed", lambda s: desktops.power_down_failed(s, "d1"), ALL_STATES,
         {"power": "on"}, given={"power": Power.OFF.value}),
    Case("warn_idle", lambda s: desktops.warn_idle(s, read(), deadline=DEADLINE, now=NOW),
         ASSIGNED, {"warned_at": NOW, "warning_deadline": DEADLINE, "updated_at": NOW}),
    Case("withdraw_warning", lambda s: desktops.withdraw_warning(s, read(), NOW), ASSIGNED,
         {"updated_at": NOW, **NO_WARNING}),
    Case("kick_console", lambda s: desktops.kick_console(s, read(), NOW), ASSIGNED,
         {"kicked_at": NOW, "last_disconnect_at": NOW, "updated_at": NOW, **CONSOLE_GONE,
          **NO_WARNING}),
    Case("log_off_idle", lambda s: desktops.log_off_idle(s, read(), NOW), ASSIGNED,
         {"state": "reclaiming", "assigned_user": None, "kicked_at": NOW,
          "last_disconnect_at": NOW, "updated_at": NOW, **CONSOLE_GONE, **NO_WARNING}),
    Case("power_down", lambda s: desktops.power_down(s, read(), Power.SUSPENDED, NOW),
         ASSIGNED, {"power": "suspended", "kicked_at": NOW, "last_disconnect_at": NOW,
                    "updated_at": NOW, **CONSOLE_GONE, **NO_WARNING}),
    Case("still_here", lambda s: desktops.still_here(s, "window", "clerk1", NOW), ASSIGNED,
         {"last_input_at": NOW, **NO_WARNING}),
    Case("open_console",
         lambda s: desktops.open_console(s, "d1", "clerk1", ConsoleKind.VNC, NOW), ASSIGNED,
         {"console_since": NOW, "console_seen_at": NOW}),
    Case("close_console", lambda s: desktops.close_console(s, "d1", "clerk1", NOW),
         ALL_STATES, {"last_disconnect_at": NOW, **CONSOLE_GONE}),
    Case("record_input", lambda s: desktops.record_input(s, "d1", NOW), ALL_STATES,
         {"last_input_at": NOW}),
    Case("console_heartbeat", lambda s: desktops.console_heartbeat(s, ["d1"], NOW), ASSIGNED,
         {"console_seen_at": NOW}),
]


@pytest.fixture
def window(db: sessionmaker[Session]) -> sessionmaker[Session]:
    Catalog(db).save_pool(Pool(id="window", display_name="Window", kind=PoolKind.FLOATING,
                               image="demo", vcpus=1, memory_mib=128, min_ready=0,
                               max_size=4, entitled_groups=("cn=staff",)))
    return db


def put(db: sessionmaker[Session], state: DesktopState, **given: Any) -> dict[str, Any]:
    with db.begin() as s:
        s.add(DesktopRow(id="d1", state=state.value, **{**USED, **given}))
    return columns(db)


def columns(db: sessionmaker[Session]) -> dict[str, Any]:
    with db() as s:
        row = s.get(DesktopRow, "d1")
        assert row is not None
        return {c: getattr(row, c) for c in COLUMNS}


def apply(db: sessionmaker[Session], call: Call) -> bool:
    with db.begin() as s:
        return bool(call(s))


def test_every_transition_has_a_case() -> None:
    public = {name for name, value in vars(desktops).items()
              if callable(value) and not name.startswith("_")
              and getattr(value, "__module__", "") == desktops.__name__
              and not isinstance(value, type)}
    assert public - {"add_provisioning"} == {c.name for c in CASES}


@pytest.mark.parametrize("state", sorted(DesktopState), ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_transition_from_each_state(window: sessionmaker[Session], case: Case,
                                    state: DesktopState) -> None:
    before = put(window, state, **case.given)
    done = apply(window, case.call)
    after = columns(window)
    if state not in case.allowed:
        assert not done, f"{case.name} from {state} was not refused"
        assert after == before
        return
    assert done, f"{case.name} from {state} was refused"
    assert after == {**before, **case.sets}


# (transition, what changed since it was read) -> refused
CHANGED: list[tuple[str, DesktopState, dict[str, Any], Call]] = [
    ("claim: the spare is someone's", DesktopState.READY, {"assigned_user": "clerk7"},
     lambda s: desktops.claim_spare(s, "window", "clerk2", NOW)),
    ("recall: a clerk claimed it", DesktopState.READY, {},
     lambda s: desktops.recall_spare(s, "d1", NOW)),
    ("log_off: another clerk's", DesktopState.ASSIGNED, {},
     lambda s: desktops.log_off(s, "d1", "clerk9", NOW)),
    ("reclaim_on_host: moved", DesktopState.READY, {"host_uri": OTHER_HOST},
     lambda s: desktops.reclaim_on_host(s, "d1", state=DesktopState.READY, host_uri=HOST,
                                        now=NOW)),
    ("removal: a clerk got it", DesktopState.READY, {},
     lambda s: desktops.start_removal(s, "d1", state=DesktopState.READY, owner=None,
                                      now=NOW)),
    ("removal: of a deleted one", DesktopState.DELETED, {},
     lambda s: desktops.start_removal(s, "d1", state=DesktopState.DELETED, owner="clerk1",
                                      now=NOW)),
    ("note: moved off that host", DesktopState.ASSIGNED, {"host_uri": OTHER_HOST},
     lambda s: desktops.note(s, "d1", "host down", on_host=HOST)),
    ("clear_note: moved off that host", DesktopState.ASSIGNED, {"host_uri": OTHER_HOST},
     lambda s: desktops.clear_note(s, "d1", on_host=HOST)),
    ("hold_for_move: moved", DesktopState.ASSIGNED, {"host_uri": OTHER_HOST},
     lambda s: desktops.hold_for_move(s, "d1", state=DesktopState.ASSIGNED, host_uri=HOST,
                                      now=NOW)),
    ("move_host: placed elsewhere already", DesktopState.RECLAIMING,
     {"host_uri": OTHER_HOST},
     lambda s: desktops.move_host(s, "d1", from_host=HOST, to_host="fake://c", now=NOW)),
    ("power_down_failed: it is on", DesktopState.ASSIGNED, {},
     lambda s: desktops.power_down_failed(s, "d1")),
    ("still_here: another clerk", DesktopState.ASSIGNED, {},
     lambda s: desktops.still_here(s, "window", "clerk9", NOW)),
    ("still_here: another pool", DesktopState.ASSIGNED, {},
     lambda s: desktops.still_here(s, "records", "clerk1", NOW)),
    ("open_console: another clerk's", DesktopState.ASSIGNED, {},
     lambda s: desktops.open_console(s, "d1", "clerk9", ConsoleKind.VNC, NOW)),
    ("open_console: powered off", DesktopState.ASSIGNED, {"power": Power.OFF.value},
     lambda s: desktops.open_console(s, "d1", "clerk1", ConsoleKind.VNC, NOW)),
    ("open_console: another console kind", DesktopState.ASSIGNED, {},
     lambda s: desktops.open_console(s, "d1", "clerk1", ConsoleKind.SPICE, NOW)),
    ("open_console: no console recorded", DesktopState.ASSIGNED, {"console_host": None},
     lambda s: desktops.open_console(s, "d1", "clerk1", ConsoleKind.VNC, NOW)),
    ("close_console: another clerk's", DesktopState.ASSIGNED, {},
     lambda s: desktops.close_console(s, "d1", "clerk9", NOW)),
    ("record_input: a later time is there", DesktopState.ASSIGNED,
     {"last_input_at": NOW + timedelta(seconds=1)},
     lambda s: desktops.record_input(s, "d1", NOW)),
    ("record_input: the same time", DesktopState.ASSIGNED, {"last_input_at": NOW},
     lambda s: desktops.record_input(s, "d1", NOW)),
    ("heartbeat: a later one is there", DesktopState.ASSIGNED,
     {"console_seen_at": NOW + timedelta(seconds=1)},
     lambda s: desktops.console_heartbeat(s, ["d1"], NOW)),
]
# what a clerk (or a broker) may change between the idle policy's read and its action
SIGNALS: dict[str, dict[str, Any]] = {
    "typed": {"last_input_at": NOW},
    "reconnected": {"console_since": NOW, "console_seen_at": NOW},
    "heartbeat": {"console_seen_at": NOW},
    "disconnected": {"last_disconnect_at": NOW},
    "warned by another broker": {"warned_at": NOW},
    "powered down": {"power": Power.OFF.value},
    "another clerk": {"assigned_user": "clerk2"},
}  # (and any other state: test_transition_from_each_state)
IDLE_ACTIONS: dict[str, Call] = {
    "warn": lambda s: desktops.warn_idle(s, read(), deadline=DEADLINE, now=NOW),
    "withdraw": lambda s: desktops.withdraw_warning(s, read(), NOW),
    "kick": lambda s: desktops.kick_console(s, read(), NOW),
    "log off": lambda s: desktops.log_off_idle(s, read(), NOW),
    "power down": lambda s: desktops.power_down(s, read(), Power.OFF, NOW),
}
for _signal, _change in SIGNALS.items():
    for _action, _call in IDLE_ACTIONS.items():
        CHANGED.append((f"{_action}: {_signal}", DesktopState.ASSIGNED, _change, _call))


@pytest.mark.parametrize(("state", "given", "call"), [c[1:] for c in CHANGED],
                         ids=[c[0] for c in CHANGED])
def test_refused_when_the_row_changed(window: sessionmaker[Session], state: DesktopState,
                                      given: dict[str, Any], call: Call) -> None:
    before = put(window, state, **given)
    assert not apply(window, call)
    assert columns(window) == before


def test_a_new_desktop_is_provisioning_and_claims_go_oldest_first(
        window: sessionmaker[Session]) -> None:
    with window.begin() as s:
        for n, name in enumerate(("young", "old")):
            desktops.add_provisioning(s, desktop_id=name, pool_id="window", host_uri=HOST,
                                      domain_name=f"vdi-{name}", now=NOW - timedelta(
                                          minutes=n))
    with window() as s:
        rows = {r.id: r for r in s.scalars(select(DesktopRow))}
    assert {r.state for r in rows.values()} == {"provisioning"}
    assert rows["old"].created_at == rows["old"].updated_at == NOW - timedelta(minutes=1)
    assert (rows["old"].assigned_user, rows["old"].console_port, rows["old"].power) == (
        None, None, "on")
    with window.begin() as s:
        assert desktops.claim_spare(s, "window", "clerk1", NOW) is None  # none ready yet
        for name in ("young", "old"):
            assert desktops.mark_ready(s, name, console=ConsoleEndpoint(ConsoleKind.VNC, "h", 1),
                                       image_version=1,
                                       now=NOW)
    with window.begin() as s:
        first = desktops.claim_spare(s, "window", "clerk1", NOW)
        second = desktops.claim_spare(s, "window", "clerk2", NOW)
        third = desktops.claim_spare(s, "window", "clerk3", NOW)
    assert first is not None and second is not None and third is None
    assert (first.id, first.assigned_user, second.id) == ("old", "clerk1", "young")


def test_power_down_is_never_to_on(window: sessionmaker[Session]) -> None:
    put(window, DesktopState.ASSIGNED)
    with pytest.raises(ValueError, match="power_down needs"), window.begin() as s:
        desktops.power_down(s, read(), Power.ON, NOW)


# --- no other module writes desktop rows ------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("vdi", "broker", "pools", "web", "bench")
OWNER = "vdi/desktops.py"
RAW_SQL = re.compile(r"\b(update|insert\s+into|delete\s+from)\s+desktops\b", re.IGNORECASE)


def _is_entity(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id == "DesktopRow"


def _loads_rows(node: ast.AST, rows: set[str]) -> bool:
    """`node` yields DesktopRow objects: select(DesktopRow), s.get(DesktopRow, ...), or a
    name already known to hold them."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            name = sub.func.attr if isinstance(sub.func, ast.Attribute) else (
                sub.func.id if isinstance(sub.func, ast.Name) else "")
            if name == "select" and sub.args and _is_entity(sub.args[0]):
                return True
            if name == "get" and sub.args and _is_entity(sub.args[0]):
                return True
        if isinstance(sub, ast.Name) and sub.id in rows:
            return True
    return False


def _names(target: ast.AST) -> set[str]:
    """The names an assignment target binds (not `x` of `x.a = ...` or `x[k] = ...`)."""
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, ast.Tuple | ast.List):
        return set().union(*(_names(e) for e in target.elts))
    if isinstance(target, ast.Starred):
        return _names(target.value)
    return set()


def _row_names(scope: ast.AST) -> set[str]:
    """Names in `scope` bound to DesktopRow objects (to a fixed point)."""
    rows: set[str] = {a.arg for a in ast.walk(scope) if isinstance(a, ast.arg)
                      and a.annotation is not None and "DesktopRow" in ast.unparse(a.annotation)}
    while True:
        before = len(rows)
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if _loads_rows(node.value, rows):
                    rows |= set().union(*(_names(t) for t in targets))
            elif isinstance(node, ast.For | ast.AsyncFor | ast.comprehension) and (
                    _loads_rows(node.iter, rows)):
                rows |= _names(node.target)
        if len(rows) == before:
            return rows


def desktop_writes(source: str) -> list[str]:
    """Every write to desktop rows in `source`: update/insert/delete(DesktopRow), a new
    DesktopRow(...), SQL text writing `desktops`, and attribute changes, deletes and
    merges of DesktopRow objects. Each as 'line N: what'."""
    tree = ast.parse(source)
    docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)
                  and isinstance(n.value, ast.Constant)}  # they may quote SQL
    found: set[tuple[int, str]] = set()
    scopes: list[ast.AST] = [tree, *(n for n in ast.walk(tree) if isinstance(
        n, ast.FunctionDef | ast.AsyncFunctionDef))]
    for scope in scopes:
        rows = _row_names(scope) if scope is not tree else set()
        for node in ast.walk(scope):
            line = getattr(node, "lineno", 0)
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else (
                    func.id if isinstance(func, ast.Name) else "")
                if name in ("update", "insert", "delete") and node.args and _is_entity(
                        node.args[0]):
                    found.add((line, f"{name}(DesktopRow)"))
                elif _is_entity(func):
                    found.add((line, "DesktopRow(...) created"))
                elif name in ("delete", "merge", "setattr") and node.args and isinstance(
                        node.args[0], ast.Name) and node.args[0].id in rows:
                    found.add((line, f"{name}() of a DesktopRow"))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                    id(node) not in docstrings and RAW_SQL.search(node.value)):
                found.add((line, "SQL text writing desktops"))
            elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and (
                            t.value.id in rows):
                        found.add((line, f"{t.value.id}.{t.attr} = ... on a DesktopRow"))
    return [f"line {n}: {what}" for n, what in sorted(found)]


def product_files() -> dict[str, str]:
    files = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if "node_modules" not in rel:
                files[rel] = path.read_text(encoding="utf-8")
    return files


def test_only_the_state_machine_writes_desktop_rows() -> None:
    offenders = {rel: writes for rel, source in product_files().items()
                 if rel != OWNER
                 and (writes := desktop_writes(source))}
    assert not offenders, "desktop rows are written outside vdi/desktops.py (call its " \
        "transitions instead):\n" + "\n".join(
            f"{rel}: {w}" for rel, writes in offenders.items() for w in writes)


@pytest.mark.parametrize(("snippet", "what"), [
    ("s.execute(update(DesktopRow).values(state='ready'))", "update(DesktopRow)"),
    ("s.execute(sa.delete(DesktopRow))", "delete(DesktopRow)"),
    ("s.execute(insert(DesktopRow).values(id='x'))", "insert(DesktopRow)"),
    ("s.add(DesktopRow(id='x'))", "DesktopRow(...) created"),
    ("s.execute(text('UPDATE desktops SET state = 1'))", "SQL text writing desktops"),
    ('"""A docstring quoting UPDATE desktops SET ...."""\nx = "delete from desktops"',
     "SQL text writing desktops"),
    ("def f(s):\n    row = s.get(DesktopRow, 'x')\n    row.state = 'ready'",
     "row.state = ... on a DesktopRow"),
    ("def f(s):\n    for r in list(s.scalars(select(DesktopRow))):\n        r.error = None",
     "r.error = ... on a DesktopRow"),
    ("def f(s):\n    rows = {r.id: r for r in s.scalars(select(DesktopRow))}\n"
     "    row = rows['x']\n    row.power = 'on'", "row.power = ... on a DesktopRow"),
    ("def f(row: DesktopRow):\n    row.kicked_at += 1", "row.kicked_at = ... on a DesktopRow"),
    ("def f(s):\n    row = s.get(DesktopRow, 'x')\n    s.delete(row)",
     "delete() of a DesktopRow"),
])
def test_the_scan_finds_each_kind_of_write(snippet: str, what: str) -> None:
    assert [w.split(": ", 1)[1] for w in desktop_writes(snippet)] == [what]


def test_the_scan_lets_reads_and_other_rows_be() -> None:
    source = ("def f(s):\n"
              "    rows = list(s.scalars(select(DesktopRow.id, DesktopRow.state)))\n"
              "    pool = s.get(PoolRow, 'p')\n"
              "    pool.image_version = 2\n"
              "    job = s.get(JobRow, 1)\n"
              "    job.state = 'done'\n"
              "    s.execute(update(JobRow).values(state='x'))\n"
              "    return select(DesktopRow).where(DesktopRow.state == 'ready')\n")
    assert desktop_writes(source) == []
