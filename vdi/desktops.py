"""The desktop state machine: the one module that writes desktop rows.

    provisioning -> ready -> assigned -> reclaiming -> ready | deleted; error from work;
    power (on | off | suspended) and the console columns apart from the state.

Every function is one statement in the caller's transaction (`s`, opened with
`sessions.begin()`), so a job or a reclaim record can be written with the change it
belongs to. Each change is a compare-and-set: the UPDATE names the state (and owner,
host or idle signals) the caller expects, and the function answers whether the row
still matched (True) or had changed meanwhile (False: nothing was written, the caller
decides what that means). Each transition sets exactly the columns it owns; in
particular a desktop that becomes ready or is claimed never keeps the previous clerk's
console, input, warning or kick times (a stale one would make the idle policy take it
back at once).

`updated_at` is the time of the last change of state, owner, host or power: the
reconciler leaves recently changed desktops alone and spares retire after waiting
unclaimed, so console signals and notes for the admin do not touch it.

Statements run with `synchronize_session=False`: ORM objects of the same desktop
loaded in the caller's session are not refreshed (read again after a change).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Update, and_, bindparam, or_, select, update
from sqlalchemy.orm import Session, aliased

from vdi import uses
from vdi.catalog import desktop_from_row
from vdi.db import rows_changed
from vdi.domain import ConsoleEndpoint, ConsoleKind, Desktop, DesktopState, Power
from vdi.models import DesktopRow

# desktops a job is making or remaking: only a job takes them to ready or error
IN_WORK = (DesktopState.PROVISIONING.value, DesktopState.RECLAIMING.value)
# a desktop that runs for a clerk or as a spare: a restart or migration ends there
RUNNING = (DesktopState.READY.value, DesktopState.ASSIGNED.value)
NOTE_MAX = 2000

# what one clerk's use leaves on a desktop: gone when the next one gets it
_NO_CLERK: dict[str, Any] = {
    "assigned_user": None, "assigned_at": None, "last_input_at": None,
    "last_disconnect_at": None, "console_since": None, "console_seen_at": None,
    "warned_at": None, "warning_deadline": None, "kicked_at": None}
_NO_CONSOLE: dict[str, Any] = {"console_since": None, "console_seen_at": None}
_NO_WARNING: dict[str, Any] = {"warned_at": None, "warning_deadline": None}


def _cas(s: Session, *where: ColumnElement[bool], **values: Any) -> bool:
    """UPDATE desktops SET values WHERE all of `where`; True if a row matched."""
    return bool(rows_changed(s.execute(_update(*where).values(**values))))


def _cas_closing(s: Session, desktop_id: str, now: datetime, *where: ColumnElement[bool],
                 **values: Any) -> bool:
    """`_cas` for a change that closes the desktop's consoles: its use (vdi.uses) ends
    with it."""
    changed = _cas(s, *where, **values)
    if changed:
        uses.end(s, desktop_id, now)
    return changed


def _update(*where: ColumnElement[bool]) -> Update:
    return update(DesktopRow).where(*where).execution_options(synchronize_session=False)


def _same(column: Any, value: object) -> ColumnElement[bool]:
    return column.is_(None) if value is None else column == value  # type: ignore[no-any-return]


# --- a new desktop and its spare life ------------------------------------------------------


def add_provisioning(s: Session, *, desktop_id: str, pool_id: str, host_uri: str,
                     domain_name: str, now: datetime) -> None:
    """A new desktop row in `provisioning` (its provision job is the caller's to add in
    the same transaction). Raises IntegrityError if the id or domain name is taken."""
    s.add(DesktopRow(id=desktop_id, pool_id=pool_id, state=DesktopState.PROVISIONING.value,
                     host_uri=host_uri, domain_name=domain_name, image_version=0,
                     power=Power.ON.value, created_at=now, updated_at=now))


def _endpoint(console: ConsoleEndpoint | None) -> dict[str, object]:
    """The endpoint columns for a console (None: the desktop has none now)."""
    if console is None:
        return {"console_host": None, "console_port": None}
    return {"console_kind": console.kind.value, "console_host": console.host,
            "console_port": console.port}


def mark_ready(s: Session, desktop_id: str, *, console: ConsoleEndpoint | None,
               image_version: int, now: datetime) -> bool:
    """provisioning | reclaiming -> ready: a fresh desktop runs with this console
    endpoint and image version; no clerk, no console or idle history, no note."""
    return _cas(s, DesktopRow.id == desktop_id, DesktopRow.state.in_(IN_WORK),
                state=DesktopState.READY.value, **_endpoint(console),
                image_version=image_version, power=Power.ON.value, error=None,
                updated_at=now, **_NO_CLERK)


# Built once: constructing this statement costs more than running it (profiled).
_spare = aliased(DesktopRow)
_CLAIM_OLDEST_SPARE = (
    update(DesktopRow)
    .where(DesktopRow.id == (
               select(_spare.id)
               .where(_spare.pool_id == bindparam("in_pool"),
                      _spare.state == DesktopState.READY.value)
               .order_by(_spare.created_at).limit(1)
               .with_for_update(skip_locked=True)
               .scalar_subquery()),
           DesktopRow.state == DesktopState.READY.value,
           DesktopRow.assigned_user.is_(None))
    .values(state=DesktopState.ASSIGNED.value, assigned_user=bindparam("username"),
            assigned_at=bindparam("claimed_at"), updated_at=bindparam("changed_at"),
            **{k: v for k, v in _NO_CLERK.items() if k not in ("assigned_user", "assigned_at")})
    .returning(DesktopRow)
    .execution_options(synchronize_session=False))


def claim_spare(s: Session, pool_id: str, username: str, now: datetime) -> Desktop | None:
    """ready -> assigned: the pool's oldest spare becomes `username`'s, in one statement

        UPDATE desktops SET state='assigned', assigned_user=... (the last clerk's columns
         cleared) WHERE id = (SELECT id ... state='ready' ORDER BY created_at LIMIT 1
                              FOR UPDATE SKIP LOCKED) AND state='ready'
                           AND assigned_user IS NULL RETURNING ...

    On PostgreSQL the subquery locks the spare it picks and skips those other claims
    hold; on SQLite (no FOR UPDATE) the write lock serialises the statement. None: no
    spare now. Raises IntegrityError when `username` holds a desktop of the pool already
    (the unique (pool, user) constraint; the transaction is then unusable)."""
    row = s.scalars(_CLAIM_OLDEST_SPARE, {"in_pool": pool_id, "username": username,
                                          "claimed_at": now, "changed_at": now}).first()
    return desktop_from_row(row) if row is not None else None


def recall_spare(s: Session, desktop_id: str, now: datetime) -> bool:
    """ready (unclaimed) -> reclaiming: a spare goes back for a revert or a removal (the
    caller adds that job). False: a clerk claimed it first."""
    return _cas(s, DesktopRow.id == desktop_id, DesktopRow.state == DesktopState.READY.value,
                DesktopRow.assigned_user.is_(None),
                state=DesktopState.RECLAIMING.value, updated_at=now)


def log_off(s: Session, desktop_id: str, username: str, now: datetime) -> bool:
    """assigned to `username` -> reclaiming: the clerk gives a floating desktop back (the
    caller adds the revert job). Their consoles count as closed; the warning goes."""
    return _cas_closing(s, desktop_id, now, DesktopRow.id == desktop_id,
                        DesktopRow.state == DesktopState.ASSIGNED.value,
                        DesktopRow.assigned_user == username,
                        state=DesktopState.RECLAIMING.value, assigned_user=None,
                        updated_at=now, **_NO_CONSOLE, **_NO_WARNING)


def reclaim_on_host(s: Session, desktop_id: str, *, state: DesktopState, host_uri: str,
                    now: datetime) -> bool:
    """`state` on `host_uri` (as the caller read it) -> reclaiming: a floating desktop
    whose host is down or drained, or whose domain vanished, is remade (the caller adds
    the job). Its clerk, if any, loses it and reconnects into another."""
    return _cas_closing(s, desktop_id, now, DesktopRow.id == desktop_id,
                        DesktopRow.state == state.value, DesktopRow.host_uri == host_uri,
                        state=DesktopState.RECLAIMING.value, assigned_user=None,
                        updated_at=now, **_NO_CONSOLE, **_NO_WARNING)


def start_removal(s: Session, desktop_id: str, *, state: DesktopState, owner: str | None,
                  now: datetime) -> bool:
    """An admin removes a desktop as they read it (`state`, held by `owner` or nobody)
    -> reclaiming; the caller adds the remove job. False: it changed meanwhile, e.g. a
    clerk got it, who must not lose it without the admin naming them."""
    if state is DesktopState.DELETED:
        return False
    return _cas_closing(s, desktop_id, now, DesktopRow.id == desktop_id,
                        DesktopRow.state == state.value, _same(DesktopRow.assigned_user, owner),
                        state=DesktopState.RECLAIMING.value, assigned_user=None,
                        updated_at=now, **_NO_CONSOLE, **_NO_WARNING)


def mark_deleted(s: Session, desktop_id: str, now: datetime) -> bool:
    """reclaiming | error (one that never came up) -> deleted: its domain and disk are
    gone; the row stays for history, with the last problem noted (why it was removed)."""
    return _cas_closing(s, desktop_id, now, DesktopRow.id == desktop_id,
                        DesktopRow.state.in_((DesktopState.RECLAIMING.value,
                                              DesktopState.ERROR.value)),
                        state=DesktopState.DELETED.value, **_endpoint(None),
                        updated_at=now, **_NO_CLERK)


def boot_failed(s: Session, desktop_id: str, message: str, now: datetime) -> bool:
    """provisioning | reclaiming (made anew, no clerk) -> error, with the reason: its
    guest never came up; the caller adds
    the remove job (which ends it as deleted), and the pool makes another. No clerk ever
    had it, and none is told one is coming from it."""
    return _cas(s, DesktopRow.id == desktop_id, DesktopRow.state.in_(IN_WORK),
                DesktopRow.assigned_user.is_(None),
                state=DesktopState.ERROR.value, error=message[:NOTE_MAX],
                updated_at=now, **_NO_CONSOLE)


def mark_error(s: Session, desktop_id: str, message: str, now: datetime) -> bool:
    """provisioning | reclaiming -> error, with the reason for the admin: its job gave
    up. A desktop in use is never put in error (see `note`)."""
    return _cas(s, DesktopRow.id == desktop_id, DesktopRow.state.in_(IN_WORK),
                state=DesktopState.ERROR.value, error=message[:NOTE_MAX], updated_at=now)


# --- notes for the admin, hosts and power -----------------------------------------------


def note(s: Session, desktop_id: str, message: str, *, on_host: str | None = None) -> bool:
    """A problem noted for the admin (and the assigner), the state unchanged. With
    `on_host`: only while the desktop is still placed there. Not on a deleted desktop."""
    return _cas(s, DesktopRow.id == desktop_id,
                DesktopRow.state != DesktopState.DELETED.value,
                *([DesktopRow.host_uri == on_host] if on_host is not None else []),
                error=message[:NOTE_MAX])


def note_addresses(s: Session, desktop_id: str, addresses: list[str]) -> bool:
    """The guest's addresses as its agent told them, the state unchanged (not on a
    deleted desktop)."""
    return _cas(s, DesktopRow.id == desktop_id,
                DesktopRow.state != DesktopState.DELETED.value,
                guest_addresses=" ".join(addresses)[:255] or None)


def clear_note(s: Session, desktop_id: str, *, on_host: str) -> bool:
    """The noted problem is over (its host answers and runs it)."""
    return _cas(s, DesktopRow.id == desktop_id, DesktopRow.host_uri == on_host,
                DesktopRow.error.is_not(None), error=None)


def hold_for_move(s: Session, desktop_id: str, *, state: DesktopState, host_uri: str,
                  now: datetime) -> bool:
    """A dedicated desktop still `state` on `host_uri` (as read) is about to be
    restarted or migrated elsewhere (the caller adds the job): nothing changes but
    `updated_at`, which keeps the reconciler off it this round."""
    return _cas(s, DesktopRow.id == desktop_id, DesktopRow.state == state.value,
                DesktopRow.host_uri == host_uri, updated_at=now)


def move_host(s: Session, desktop_id: str, *, from_host: str, to_host: str,
              now: datetime) -> bool:
    """A desktop being made again (provisioning | reclaiming) is placed on another host
    before its new domain is made there."""
    return _cas(s, DesktopRow.id == desktop_id, DesktopRow.state.in_(IN_WORK),
                DesktopRow.host_uri == from_host, host_uri=to_host, updated_at=now)


def mark_running(s: Session, desktop_id: str, *, host_uri: str, console: ConsoleEndpoint,
                 now: datetime) -> bool:
    """A ready or assigned desktop runs (again) on `host_uri` with this console
    endpoint, powered on: a restart, a migration or a resume is done; its note goes."""
    return _cas(s, DesktopRow.id == desktop_id, DesktopRow.state.in_(RUNNING),
                host_uri=host_uri, **_endpoint(console),
                power=Power.ON.value, error=None, updated_at=now)


def power_down_failed(s: Session, desktop_id: str) -> bool:
    """off | suspended -> on: the job that was to power it down gave up, so it still
    runs (the idle policy asked for it; nothing else changes)."""
    return _cas(s, DesktopRow.id == desktop_id,
                DesktopRow.power.in_([Power.OFF.value, Power.SUSPENDED.value]),
                power=Power.ON.value)


# --- the idle policy -----------------------------------------------------------------------


@dataclass(frozen=True)
class AsRead:
    """An assigned desktop's idle signals as the idle policy read them. Its actions
    apply only while the row still holds exactly these: a clerk who reconnects or types
    meanwhile changes one, and the action is dropped."""

    desktop_id: str
    assigned_user: str | None
    power: Power
    console_since: datetime | None
    console_seen_at: datetime | None
    last_disconnect_at: datetime | None
    last_input_at: datetime | None
    warned_at: datetime | None

    @classmethod
    def of(cls, row: DesktopRow) -> AsRead:
        return cls(desktop_id=row.id, assigned_user=row.assigned_user,
                   power=Power(row.power), console_since=row.console_since,
                   console_seen_at=row.console_seen_at,
                   last_disconnect_at=row.last_disconnect_at,
                   last_input_at=row.last_input_at, warned_at=row.warned_at)

    def unchanged(self) -> ColumnElement[bool]:
        return and_(DesktopRow.id == self.desktop_id,
                    DesktopRow.state == DesktopState.ASSIGNED.value,
                    DesktopRow.power == self.power.value,
                    _same(DesktopRow.assigned_user, self.assigned_user),
                    _same(DesktopRow.console_since, self.console_since),
                    _same(DesktopRow.console_seen_at, self.console_seen_at),
                    _same(DesktopRow.last_disconnect_at, self.last_disconnect_at),
                    _same(DesktopRow.last_input_at, self.last_input_at),
                    _same(DesktopRow.warned_at, self.warned_at))


def warn_idle(s: Session, read: AsRead, *, deadline: datetime | None, now: datetime) -> bool:
    """The clerk is warned now; the idle action runs at `deadline` unless they answer."""
    return _cas(s, read.unchanged(), warned_at=now, warning_deadline=deadline,
                updated_at=now)


def withdraw_warning(s: Session, read: AsRead, now: datetime) -> bool:
    """The clerk was active again: the warning goes."""
    return _cas(s, read.unchanged(), updated_at=now, **_NO_WARNING)


def kick_console(s: Session, read: AsRead, now: datetime) -> bool:
    """The idle policy disconnects the clerk: consoles opened before now are closed by
    the brokers holding them (`kicked_at`), and the disconnected grace starts now."""
    return _cas_closing(s, read.desktop_id, now, read.unchanged(), kicked_at=now,
                        last_disconnect_at=now, updated_at=now, **_NO_CONSOLE, **_NO_WARNING)


def log_off_idle(s: Session, read: AsRead, now: datetime) -> bool:
    """assigned -> reclaiming: the idle policy logs the clerk off a floating desktop
    (the caller adds the revert job); their consoles are closed."""
    return _cas_closing(s, read.desktop_id, now, read.unchanged(),
                        state=DesktopState.RECLAIMING.value, assigned_user=None, kicked_at=now,
                        last_disconnect_at=now, updated_at=now, **_NO_CONSOLE, **_NO_WARNING)


def power_down(s: Session, read: AsRead, power: Power, now: datetime) -> bool:
    """on -> off | suspended: the idle policy shuts down or suspends a dedicated desktop
    that stays its clerk's (the caller adds the power job); their consoles are closed."""
    if power is Power.ON:
        raise ValueError("power_down needs Power.OFF or Power.SUSPENDED")
    return _cas_closing(s, read.desktop_id, now, read.unchanged(), power=power.value,
                        kicked_at=now, last_disconnect_at=now, updated_at=now, **_NO_CONSOLE,
                        **_NO_WARNING)


def still_here(s: Session, pool_id: str, username: str, now: datetime) -> bool:
    """The clerk answered the idle warning: that is input, and the warning goes. False:
    no desktop of theirs in the pool (it was taken back already)."""
    return _cas(s, DesktopRow.pool_id == pool_id, DesktopRow.assigned_user == username,
                DesktopRow.state == DesktopState.ASSIGNED.value,
                last_input_at=now, **_NO_WARNING)


# --- consoles ----------------------------------------------------------------------------


def open_console(s: Session, desktop_id: str, username: str, kind: ConsoleKind,
                 now: datetime) -> Desktop | None:
    """A console of `kind` opens on a desktop still `username`'s, powered on and serving
    that kind: it is open since now. None: a reclaim (or a power-down) won first, or the
    desktop has no such console, and the console must not open."""
    row = s.scalars(_update(
        DesktopRow.id == desktop_id, DesktopRow.state == DesktopState.ASSIGNED.value,
        DesktopRow.assigned_user == username, DesktopRow.power == Power.ON.value,
        DesktopRow.console_kind == kind.value, DesktopRow.console_host.is_not(None),
        DesktopRow.console_port.is_not(None))
        .values(console_since=now, console_seen_at=now)
        .returning(DesktopRow)).first()
    if row is None:
        return None
    uses.begin(s, desktop_id, username, now)
    return desktop_from_row(row)


def close_console(s: Session, desktop_id: str, username: str, now: datetime) -> bool:
    """The last console of this broker on the desktop closed (another broker's heartbeat
    says if it still holds one). Only while the desktop is still `username`'s."""
    return _cas_closing(s, desktop_id, now, DesktopRow.id == desktop_id,
                        DesktopRow.assigned_user == username, last_disconnect_at=now,
                        **_NO_CONSOLE)


def record_input(s: Session, desktop_id: str, at: datetime) -> bool:
    """The clerk's last key or pointer event reached a console at `at`. Never back in
    time: a later time written already (another broker, "I'm still here") stays."""
    return _cas(s, DesktopRow.id == desktop_id,
                or_(DesktopRow.last_input_at.is_(None), DesktopRow.last_input_at < at),
                last_input_at=at)


def console_heartbeat(s: Session, desktop_ids: Collection[str], now: datetime) -> int:
    """The consoles this broker holds on these assigned desktops are still open as of
    `now` (never back in time). Returns how many desktops were touched."""
    if not desktop_ids:
        return 0
    uses.seen(s, desktop_ids, now)
    return rows_changed(s.execute(_update(
        DesktopRow.id.in_(list(desktop_ids)), DesktopRow.state == DesktopState.ASSIGNED.value,
        or_(DesktopRow.console_seen_at.is_(None), DesktopRow.console_seen_at < now))
        .values(console_seen_at=now)))
