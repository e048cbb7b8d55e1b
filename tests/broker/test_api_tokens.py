"""Personal API tokens on a real SQLite database, with the in-memory directory and a
clock the test moves: hashing, expiry, revocation, the owner's roles re-read, the
throttle on unknown secrets, and what the audit trail keeps (never a secret)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.api_token_store import ApiTokenStore, fingerprint_of
from broker.api_tokens import (
    MAX_LIVE_PER_PERSON,
    ApiTokens,
    TokenExpired,
    TokenNotFound,
    TokenOwnerNotAllowed,
    TokenRefused,
    TokenRevoked,
    TooManyTokens,
)
from broker.auth.directory import DirectoryUnavailable, DirectoryUser
from broker.auth.fake_directory import FakeDirectory
from broker.auth.throttle import LoginThrottle, Throttled
from broker.blocking import Blocking
from broker.errors import BadRequest
from broker.roles import roles_for
from broker.sessions import hash_secret
from tests.conftest import ManualClock
from vdi.audit import AuditLog
from vdi.domain import Principal, Role
from vdi.models import ApiTokenRow, AuditRow
from vdi.settings import RoleMap

HELPDESK = "cn=helpdesk,ou=groups,dc=fake,dc=invalid"
SECURITY = "cn=security,ou=groups,dc=fake,dc=invalid"
STAFF = "cn=staff,ou=groups,dc=fake,dc=invalid"
ROLE_MAP = RoleMap(helpdesk=(HELPDESK,), security_admin=(SECURITY,), staff=(STAFF,))
RECHECK_S = 300


def directory() -> FakeDirectory:
    return FakeDirectory({"wangwu": ("pw", "王五", [HELPDESK, STAFF]),
                          "wujiu": ("pw", "吴九", [SECURITY]),
                          "zhangsan": ("pw", "张三", [STAFF])})


def principal(d: FakeDirectory, name: str) -> Principal:
    user = d.lookup(name)
    assert user is not None
    return Principal(user.username, user.display_name, roles_for(user.groups, ROLE_MAP),
                     user.groups)


@pytest.fixture
def blocking() -> Iterator[Blocking]:
    b = Blocking()
    yield b
    b.close()


def make(db: sessionmaker[Session], clock: ManualClock, d: FakeDirectory,
         blocking: Blocking) -> ApiTokens:
    return ApiTokens(blocking=blocking, store=ApiTokenStore(db, clock=clock), directory=d,
                     throttle=LoginThrottle(db, limit=3, clock=clock),
                     audit=AuditLog(db, clock=clock), role_map=lambda: ROLE_MAP, max_days=90,
                     recheck_s=RECHECK_S, confirm_s=10, directory_deadline_s=5, clock=clock)


def audit(db: sessionmaker[Session], action: str) -> list[AuditRow]:
    with db() as s:
        return list(s.scalars(select(AuditRow).where(AuditRow.action == action)
                              .order_by(AuditRow.id)))


async def test_the_secret_is_shown_once_and_kept_only_as_its_hash(
        db: sessionmaker[Session], clock: ManualClock, blocking: Blocking,
        db_url: str) -> None:
    d = directory()
    tokens = make(db, clock, d, blocking)
    made = await tokens.create(principal(d, "wangwu"), "  laptop   script ", 30, "10.0.0.5")
    assert made.secret.startswith("vdi_") and len(made.secret) == 47
    assert made.token.name == "laptop script"
    assert made.token.expires_at - made.token.created_at == timedelta(days=30)
    with db() as s:
        [row] = s.scalars(select(ApiTokenRow)).all()
    assert row.token_hash == hash_secret(made.secret)
    assert made.token.fingerprint == fingerprint_of(made.secret)
    # nowhere in the database, the audit trail included
    path = Path(db_url.removeprefix("sqlite:///"))
    stored = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    assert made.secret.encode() not in stored
    assert made.secret[4:].encode() not in stored
    [created] = audit(db, "api-token-create")
    assert created.actor == "wangwu" and created.target == f"token {made.token.fingerprint}"
    assert "laptop script" in created.detail and "30 days" in created.detail
    use = await tokens.authenticate(made.secret, "10.0.0.5")
    assert use.session.principal.username == "wangwu"
    assert use.token.id == made.token.id and use.session.csrf == ""
    [listed] = await tokens.mine(principal(d, "wangwu"))
    assert listed.last_used_from == "10.0.0.5" and listed.last_used_at == clock.now


async def test_name_and_expiry_are_checked_and_a_person_has_at_most_so_many(
        db: sessionmaker[Session], clock: ManualClock, blocking: Blocking) -> None:
    d = directory()
    tokens = make(db, clock, d, blocking)
    who = principal(d, "wangwu")
    for name, days in (("", 30), ("x" * 65, 30), ("tab\x07", 30), ("ok", 0), ("ok", 91),
                       ("ok", -1)):
        with pytest.raises(BadRequest):
            await tokens.create(who, name, days, "s")
    for i in range(MAX_LIVE_PER_PERSON):
        await tokens.create(who, f"t{i}", 90, "s")
    with pytest.raises(TooManyTokens):
        await tokens.create(who, "one more", 90, "s")
    clock.advance(90 * 86400)  # all expired: room again
    await tokens.create(who, "fresh", 1, "s")


async def test_an_expired_or_revoked_token_is_refused_and_recorded(
        db: sessionmaker[Session], clock: ManualClock, blocking: Blocking) -> None:
    d = directory()
    tokens = make(db, clock, d, blocking)
    who = principal(d, "wangwu")
    short = await tokens.create(who, "short", 1, "s")
    other = await tokens.create(who, "other", 5, "s")
    clock.advance(86400 - 1)
    await tokens.authenticate(short.secret, "s")
    clock.advance(1)
    with pytest.raises(TokenExpired):
        await tokens.authenticate(short.secret, "s")
    # another person cannot revoke it; its owner can, once
    with pytest.raises(TokenNotFound):
        await tokens.revoke_own(principal(d, "wujiu"), other.token.id, "s")
    await tokens.revoke_own(who, other.token.id, "s")
    with pytest.raises(TokenNotFound):
        await tokens.revoke_own(who, other.token.id, "s")
    with pytest.raises(TokenRevoked):
        await tokens.authenticate(other.secret, "s")
    assert [t.name for t in await tokens.mine(who)] == ["short"]  # expired still listed
    refused = audit(db, "api-token-use")
    assert [r.outcome for r in refused] == ["refused", "refused"]
    assert "expired" in refused[0].detail and "revoked" in refused[1].detail
    [revoked] = audit(db, "api-token-revoke")
    assert revoked.target == f"token {other.token.fingerprint}"
    for row in [*refused, revoked]:
        assert short.secret not in row.detail and other.secret not in row.detail


async def test_the_security_administrator_lists_and_revokes_anyones(
        db: sessionmaker[Session], clock: ManualClock, blocking: Blocking) -> None:
    d = directory()
    tokens = make(db, clock, d, blocking)
    made = await tokens.create(principal(d, "wangwu"), "script", 30, "s")
    sec = principal(d, "wujiu")
    assert [t.username for t in await tokens.everyone(sec, "s")] == ["wangwu"]
    with pytest.raises(BadRequest):
        await tokens.revoke_any(sec, made.token.id, "no", "s")
    await tokens.revoke_any(sec, made.token.id, "laptop was stolen", "s")
    [revoked] = audit(db, "api-token-revoke")
    assert revoked.actor == "wujiu" and "laptop was stolen" in revoked.detail
    assert await tokens.everyone(sec, "s") == []


async def test_the_owner_s_roles_are_re_read_and_a_removed_group_stops_the_token(
        db: sessionmaker[Session], clock: ManualClock, blocking: Blocking) -> None:
    d = directory()
    tokens = make(db, clock, d, blocking)
    made = await tokens.create(principal(d, "wangwu"), "script", 30, "s")
    d._users["wangwu"] = ("wangwu", "pw", "王五", (STAFF,))  # left the helpdesk group
    clock.advance(RECHECK_S - 1)
    await tokens.authenticate(made.secret, "s")  # the roles are cached a while
    clock.advance(1)
    with pytest.raises(TokenOwnerNotAllowed):
        await tokens.authenticate(made.secret, "s")
    [changed] = audit(db, "api-token-roles")
    assert changed.detail == "roles were helpdesk,staff"
    d._users["wangwu"] = ("wangwu", "pw", "王五", (HELPDESK,))  # back in it
    clock.advance(RECHECK_S)
    assert (await tokens.authenticate(made.secret, "s")).session.principal.roles
    d.remove_user("wangwu")  # the account is gone; a fresh route asks at once
    clock.advance(11)
    with pytest.raises(TokenOwnerNotAllowed):
        await tokens.authenticate(made.secret, "s", fresh=True)
    assert "gone from the directory" in audit(db, "api-token-use")[-1].detail


async def test_unknown_secrets_count_against_the_address_then_are_throttled(
        db: sessionmaker[Session], clock: ManualClock, blocking: Blocking) -> None:
    d = directory()
    tokens = make(db, clock, d, blocking)
    made = await tokens.create(principal(d, "wangwu"), "script", 30, "s")
    for guess in ("vdi_" + "A" * 43, "nonsense", made.secret + "\n"):
        with pytest.raises(TokenRefused) as e:
            await tokens.authenticate(guess, "10.9.9.9")
        assert type(e.value) is TokenRefused
    with pytest.raises(Throttled):
        await tokens.authenticate("vdi_" + "B" * 43, "10.9.9.9")
    await tokens.authenticate(made.secret, "10.9.9.9")  # the real one still works
    with pytest.raises(TokenRefused):  # another address is not throttled
        await tokens.authenticate("vdi_" + "B" * 43, "10.9.9.8")
    outcomes = [r.outcome for r in audit(db, "api-token-use")]
    assert outcomes == ["refused"] * 3 + ["throttled", "refused"]


class Unanswering(FakeDirectory):
    """The directory is down: every lookup fails."""

    down = False

    def lookup(self, username: str) -> DirectoryUser | None:
        if self.down:
            raise DirectoryUnavailable("no answer")
        return super().lookup(username)


async def test_while_the_directory_does_not_answer_the_roles_last_confirmed_are_kept(
        db: sessionmaker[Session], clock: ManualClock, blocking: Blocking) -> None:
    d = Unanswering({"wangwu": ("pw", "王五", [HELPDESK])})
    tokens = make(db, clock, d, blocking)
    made = await tokens.create(principal(d, "wangwu"), "script", 30, "s")
    d.down = True
    clock.advance(RECHECK_S + 1)
    kept = await tokens.authenticate(made.secret, "s", fresh=True)
    assert kept.session.principal.roles == frozenset({Role.HELPDESK})
    d.down = False
    d.remove_user("wangwu")
    clock.advance(31)  # after the back-off the directory is asked again
    with pytest.raises(TokenOwnerNotAllowed):
        await tokens.authenticate(made.secret, "s")
