"""Personal API tokens: a helpdesk member or an administrator makes one for themselves
(a name, an expiry in days up to `api_token_max_days`), sees the secret once, lists and
revokes their own; the security administrator lists and revokes anyone's.

A request carrying `Authorization: Bearer <secret>` acts with the owner's roles as the
directory gives them now: re-read like a session's (every `session_recheck_s`, and at
once for a route that asks for a fresh confirmation), so a group removed or an account
disabled stops the token within minutes. While the directory does not answer, the roles
last confirmed are kept, as for sessions. Making, revoking and every refused use are
recorded (the token named by its fingerprint, never its secret); unknown secrets count
against the sign-in throttle of the address they come from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from broker.access import allows, roles_text
from broker.api_token_store import ApiToken, ApiTokenStore
from broker.auth.directory import Directory, DirectoryUnavailable
from broker.auth.throttle import LoginThrottle, Throttled
from broker.blocking import Blocking
from broker.errors import BadRequest, BrokerError
from broker.roles import roles_for
from broker.sessions import WebSession
from vdi.audit import AuditLog
from vdi.domain import Permission, Principal, utc_now
from vdi.settings import RoleMap

log = logging.getLogger(__name__)
NAME_CHARS = 64
MAX_LIVE_PER_PERSON = 20
REASON_CHARS = (4, 500)
# after a failed directory lookup the directory is left alone this long (tokens kept)
RECHECK_BACKOFF = timedelta(seconds=30)


class TokenRefused(BrokerError):
    """The bearer token cannot be used (unknown or malformed); 401."""

    code = "token_invalid"


class TokenExpired(TokenRefused):
    code = "token_expired"


class TokenRevoked(TokenRefused):
    code = "token_revoked"


class TokenOwnerNotAllowed(TokenRefused):
    """The owner is gone from the directory, or holds no role that may use tokens now."""

    code = "token_not_allowed"


class TokenNotFound(BrokerError):
    """No such token (or not the caller's)."""

    code = "token_not_found"


class TooManyTokens(BrokerError):
    code = "too_many_tokens"


@dataclass(frozen=True)
class Created:
    secret: str  # shown once, to the owner; never stored or logged
    token: ApiToken


@dataclass(frozen=True)
class TokenUse:
    """A request admitted by its bearer token: the owner as a session-like value for the
    use cases (no cookie, no CSRF token), and the token."""

    session: WebSession
    token: ApiToken


def may_have_tokens(who: Principal) -> bool:
    return allows(who, Permission.API_TOKENS)


class ApiTokens:
    def __init__(self, *, blocking: Blocking, store: ApiTokenStore, directory: Directory,
                 throttle: LoginThrottle, audit: AuditLog, role_map: Callable[[], RoleMap],
                 max_days: int, recheck_s: float, confirm_s: float,
                 directory_deadline_s: float,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self._blocking = blocking
        self._store = store
        self._directory = directory
        self._throttle = throttle
        self._audit = audit
        self._role_map = role_map
        self.max_days = max_days
        self._recheck = timedelta(seconds=recheck_s)
        self._confirm = timedelta(seconds=confirm_s)
        self._deadline_s = directory_deadline_s
        self._clock = clock
        self._directory_down_until: datetime | None = None

    # -- the owner's -------------------------------------------------------------------

    async def create(self, who: Principal, name: str, days: int, source: str) -> Created:
        """A token of `who` named `name`, valid `days` days. Raises BadRequest (name or
        days), TooManyTokens."""
        name = " ".join(name.split())
        if not 1 <= len(name) <= NAME_CHARS or not name.isprintable():
            raise BadRequest("Give the token a name of 1 to 64 characters.")
        if not 1 <= days <= self.max_days:
            raise BadRequest("The expiry is a number of days, up to the longest allowed.")
        expires = self._clock() + timedelta(days=days)

        def create() -> tuple[str, ApiToken] | None:
            if self._store.live_count(who.username) >= MAX_LIVE_PER_PERSON:
                return None
            return self._store.create(who, name, days, audit=lambda fp: self._audit.row(
                actor=who.username, role=roles_text(who), action="api-token-create",
                target=f"token {fp}", source=source, outcome="ok",
                detail=f"name: {name}; expires {expires:%Y-%m-%d %H:%M} UTC ({days} days)"))
        made = await self._blocking.db(create)
        if made is None:
            raise TooManyTokens(who.username)
        return Created(*made)

    async def mine(self, who: Principal) -> list[ApiToken]:
        return await self._blocking.db(self._store.of_user, who.username)

    async def revoke_own(self, who: Principal, token_id: int, source: str) -> ApiToken:
        """Raises TokenNotFound (also for another person's token)."""
        return await self._revoke(who, token_id, source, owner=who.username,
                                  why="revoked by its owner")

    # -- the security administrator's --------------------------------------------------

    async def everyone(self, who: Principal, source: str) -> list[ApiToken]:
        tokens = await self._blocking.db(self._store.live)
        await self._blocking.db(lambda: self._audit.record(
            actor=who.username, role=roles_text(who), action="api-tokens-read", target="-",
            source=source, outcome="ok", detail=f"{len(tokens)} live token(s)"))
        return tokens

    async def revoke_any(self, who: Principal, token_id: int, reason: str,
                         source: str) -> ApiToken:
        """Raises BadRequest (reason), TokenNotFound."""
        reason = " ".join(reason.split())
        if not REASON_CHARS[0] <= len(reason) <= REASON_CHARS[1] or not reason.isprintable():
            raise BadRequest("Give a reason of 4 to 500 characters.")
        return await self._revoke(who, token_id, source, owner=None,
                                  why=f"revoked by the security administrator; reason: "
                                      f"{reason}")

    async def _revoke(self, who: Principal, token_id: int, source: str, *,
                      owner: str | None, why: str) -> ApiToken:
        token = await self._blocking.db(lambda: self._store.revoke(
            token_id, who.username, owner=owner, audit=lambda t: self._audit.row(
                actor=who.username, role=roles_text(who), action="api-token-revoke",
                target=f"token {t.fingerprint}", source=source, outcome="ok",
                detail=f"{t.username}'s token {t.name!r}; {why}")))
        if token is None:
            raise TokenNotFound(str(token_id))
        return token

    # -- a request with a bearer token -------------------------------------------------

    async def authenticate(self, secret: str, source: str, *, fresh: bool = False
                           ) -> TokenUse:
        """The owner behind a bearer token, with their roles as the directory gives them
        (asked now when `fresh`, else when the last answer is older than the re-check
        bound). Raises TokenRefused (or a subclass), Throttled; every refusal is
        recorded."""
        token = await self._blocking.db(self._store.find, secret)
        now = self._clock()
        if token is None:
            await self._unknown(source)
        assert token is not None
        if token.revoked_at is not None:
            await self._refused(token, source, "revoked")
            raise TokenRevoked(token.fingerprint)
        if token.expires_at <= now:
            await self._refused(token, source, "expired")
            raise TokenExpired(token.fingerprint)
        principal = await self._current(token, self._confirm if fresh else self._recheck)
        if principal is None or not may_have_tokens(principal):
            await self._refused(token, source, "its owner is gone from the directory"
                                if principal is None else
                                f"its owner holds no role that may use tokens "
                                f"({roles_text(principal)})")
            raise TokenOwnerNotAllowed(token.fingerprint)
        await self._blocking.db(self._store.touch, token, source)
        session = WebSession(id_hash=f"api-token:{token.id}", principal=principal, csrf="",
                             created_at=token.created_at, checked_at=token.checked_at)
        return TokenUse(session, token)

    async def _current(self, token: ApiToken, bound: timedelta) -> Principal | None:
        """The owner as the directory last said (None: gone), asked again when that is
        older than `bound`; kept as it was while the directory does not answer."""
        now = self._clock()
        if now - token.checked_at < bound:  # a gone owner was stored with no roles
            return token.principal
        if self._directory_down_until is not None and now < self._directory_down_until:
            return token.principal
        try:
            user = await self._blocking.directory(self._directory.lookup, token.username,
                                                  deadline_s=self._deadline_s)
        except (DirectoryUnavailable, TimeoutError) as e:
            self._directory_down_until = self._clock() + RECHECK_BACKOFF
            log.warning("token re-checks postponed for %d s (%s): %s",
                        RECHECK_BACKOFF.total_seconds(), token.username, e or "no answer")
            return token.principal
        self._directory_down_until = None
        if user is None:
            gone = Principal(token.username, token.principal.display_name, frozenset(),
                             frozenset())
            await self._blocking.db(self._store.confirm, token.id, gone)
            return None
        principal = Principal(username=user.username, display_name=user.display_name,
                              roles=roles_for(user.groups, self._role_map()), groups=user.groups)
        await self._blocking.db(self._store.confirm, token.id, principal)
        if principal.roles != token.principal.roles:
            await self._blocking.db(lambda: self._audit.record(
                actor=token.username, role=roles_text(principal), action="api-token-roles",
                target=f"token {token.fingerprint}", source="directory", outcome="ok",
                detail=f"roles were {roles_text(token.principal)}"))
        return principal

    async def _unknown(self, source: str) -> None:
        """An unknown or malformed secret: counted against the address (a guess), then
        refused. Raises TokenRefused, or Throttled past the throttle's limit."""
        try:
            attempt = await self._blocking.db(self._throttle.reserve, f"api-token {source}",
                                              source)
        except Throttled:
            await self._blocking.db(lambda: self._audit.record(
                actor="-", role="-", action="api-token-use", target="-", source=source,
                outcome="throttled", detail="unknown token; too many from this address"))
            raise
        attempt.failed()
        await self._blocking.db(lambda: self._audit.record(
            actor="-", role="-", action="api-token-use", target="-", source=source,
            outcome="refused", detail="unknown or malformed token"))
        raise TokenRefused("unknown")

    async def _refused(self, token: ApiToken, source: str, why: str) -> None:
        await self._blocking.db(lambda: self._audit.record(
            actor=token.username, role=roles_text(token.principal), action="api-token-use",
            target=f"token {token.fingerprint}", source=source, outcome="refused",
            detail=f"token {token.name!r} {why}"))
