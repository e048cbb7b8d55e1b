"""The use cases' refusals. Each has a stable `code`; web.errors maps each class to an
HTTP status and a message in the user's language (one table, nothing per route)."""

from __future__ import annotations


class BrokerError(Exception):
    """Base of every refusal a use case reports to its caller."""

    code = "broker_error"


class NotSignedIn(BrokerError):
    code = "not_signed_in"


class Forbidden(BrokerError):
    """Signed in, but the roles do not hold the permission."""

    code = "forbidden"


class BadRequest(BrokerError):
    """The request's values are malformed; the message says which."""

    code = "bad_request"


class NoAccess(BrokerError):
    """The directory knows the account, but no role or pool is granted to it."""

    code = "no_access"


class RoleConflict(NoAccess):
    """The account's groups map to two administrator roles (and nothing else): it holds
    neither (三员分立)."""

    code = "role_conflict"


class NoDesktop(BrokerError):
    """The user holds no desktop in that pool."""

    code = "no_desktop"


class NoMessage(BrokerError):
    """No such message to this user, or it was acknowledged already."""

    code = "no_message"
