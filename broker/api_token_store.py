"""Personal API tokens in the database: the secret is made here, handed out once and
kept only as its SHA-256 (256 random bits: no slow hash is needed against guessing).
Every method BLOCKS on the database: call it from a database thread (broker.api_tokens
is the use case around it)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from broker.sessions import hash_secret
from vdi.domain import Principal, Role, utc_now
from vdi.models import ApiTokenRow, AuditRow

PREFIX = "vdi_"
SECRET_RE = re.compile(r"^vdi_[A-Za-z0-9_-]{43}$")  # PREFIX + token_urlsafe(32)
FINGERPRINT_CHARS = 8  # of the secret's hash: names a token in lists and the audit trail
TOUCH_EVERY = timedelta(seconds=60)  # last_used is written at most this often
KEEP_EXPIRED = timedelta(days=30)  # expired tokens stay in their owner's list this long
_ROLE_NAMES = frozenset(r.value for r in Role)


def fingerprint_of(secret: str) -> str:
    """What a token is called where its secret may not be: the start of its hash (its
    owner can compute it: `printf %s "$TOKEN" | sha256sum`)."""
    return hash_secret(secret)[:FINGERPRINT_CHARS]


@dataclass(frozen=True)
class ApiToken:
    id: int
    username: str
    name: str
    fingerprint: str
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None
    last_used_from: str | None
    revoked_at: datetime | None
    revoked_by: str | None
    principal: Principal  # the owner as the directory last confirmed them
    checked_at: datetime

    def state(self, now: datetime) -> str:
        """live, expired or revoked."""
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expires_at <= now else "live"


class ApiTokenStore:
    def __init__(self, sessions: sessionmaker[Session],
                 clock: Callable[[], datetime] = utc_now) -> None:
        self._sessions = sessions
        self._clock = clock

    def create(self, owner: Principal, name: str, days: int,
               audit: Callable[[str], AuditRow] | None = None) -> tuple[str, ApiToken]:
        """A new token of `owner` valid `days` days: (the secret, the token). `audit`
        makes the token's audit record from its fingerprint; it is written in the same
        transaction."""
        secret = PREFIX + secrets.token_urlsafe(32)
        now = self._clock()
        row = ApiTokenRow(token_hash=hash_secret(secret), username=owner.username,
                          name=name, created_at=now, expires_at=now + timedelta(days=days),
                          display_name=owner.display_name,
                          roles=sorted(r.value for r in owner.roles),
                          groups=sorted(owner.groups), checked_at=now)
        with self._sessions.begin() as s:
            s.add(row)
            if audit is not None:
                s.add(audit(fingerprint_of(secret)))
            s.flush()
            return secret, _to_token(row)

    def live_count(self, username: str) -> int:
        now = self._clock()
        with self._sessions() as s:
            return int(s.scalar(select(func.count()).select_from(ApiTokenRow).where(
                ApiTokenRow.username == username, ApiTokenRow.revoked_at.is_(None),
                ApiTokenRow.expires_at > now)) or 0)

    def of_user(self, username: str) -> list[ApiToken]:
        """The user's tokens not revoked (live, and expired within KEEP_EXPIRED), newest
        first."""
        now = self._clock()
        with self._sessions() as s:
            return [_to_token(r) for r in s.scalars(select(ApiTokenRow).where(
                ApiTokenRow.username == username, ApiTokenRow.revoked_at.is_(None),
                ApiTokenRow.expires_at > now - KEEP_EXPIRED)
                .order_by(ApiTokenRow.id.desc()))]

    def live(self, limit: int = 1000) -> list[ApiToken]:
        """Everyone's live tokens, newest first (for the security administrator)."""
        now = self._clock()
        with self._sessions() as s:
            return [_to_token(r) for r in s.scalars(select(ApiTokenRow).where(
                ApiTokenRow.revoked_at.is_(None), ApiTokenRow.expires_at > now)
                .order_by(ApiTokenRow.id.desc()).limit(limit))]

    def get(self, token_id: int) -> ApiToken | None:
        with self._sessions() as s:
            row = s.get(ApiTokenRow, token_id)
            return None if row is None else _to_token(row)

    def find(self, secret: str) -> ApiToken | None:
        """The token whose secret this is (revoked and expired ones too), or None for a
        malformed or unknown secret."""
        if not SECRET_RE.fullmatch(secret):  # match() would let a trailing newline through
            return None
        with self._sessions() as s:
            row = s.scalars(select(ApiTokenRow).where(
                ApiTokenRow.token_hash == hash_secret(secret))).first()
            return None if row is None else _to_token(row)

    def revoke(self, token_id: int, by: str, *, owner: str | None = None,
               audit: Callable[[ApiToken], AuditRow] | None = None) -> ApiToken | None:
        """Revoke a token not revoked yet (only `owner`'s, when given): the token as it
        was, or None when there is no such token to revoke. Its audit record (`audit`)
        is written in the same transaction."""
        now = self._clock()
        with self._sessions.begin() as s:
            q = update(ApiTokenRow).where(ApiTokenRow.id == token_id,
                                          ApiTokenRow.revoked_at.is_(None))
            if owner is not None:
                q = q.where(ApiTokenRow.username == owner)
            done = s.execute(q.values(revoked_at=now, revoked_by=by[:128])
                             .returning(ApiTokenRow.id)
                             .execution_options(synchronize_session=False)).scalar()
            if done is None:
                return None
            row = s.get(ApiTokenRow, token_id)
            assert row is not None
            s.refresh(row)
            token = _to_token(row)
            if audit is not None:
                s.add(audit(token))
            return token

    def confirm(self, token_id: int, principal: Principal) -> None:
        """The directory answered for the owner: their roles and groups as of now (none
        when the account is gone)."""
        with self._sessions.begin() as s:
            s.execute(update(ApiTokenRow).where(ApiTokenRow.id == token_id).values(
                display_name=principal.display_name[:200],
                roles=sorted(r.value for r in principal.roles),
                groups=sorted(principal.groups), checked_at=self._clock()))

    def touch(self, token: ApiToken, source: str) -> None:
        """Note a use, at most once a minute (every API request reads the token)."""
        now = self._clock()
        if token.last_used_at is not None and now - token.last_used_at < TOUCH_EVERY:
            return
        with self._sessions.begin() as s:
            s.execute(update(ApiTokenRow).where(ApiTokenRow.id == token.id).values(
                last_used_at=now, last_used_from=source[:64]))


def _to_token(row: ApiTokenRow) -> ApiToken:
    principal = Principal(username=row.username, display_name=row.display_name,
                          roles=frozenset(Role(r) for r in row.roles if r in _ROLE_NAMES),
                          groups=frozenset(row.groups))
    return ApiToken(id=row.id, username=row.username, name=row.name,
                    fingerprint=row.token_hash[:FINGERPRINT_CHARS], created_at=row.created_at,
                    expires_at=row.expires_at, last_used_at=row.last_used_at,
                    last_used_from=row.last_used_from, revoked_at=row.revoked_at,
                    revoked_by=row.revoked_by, principal=principal,
                    checked_at=row.checked_at)
