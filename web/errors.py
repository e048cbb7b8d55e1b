"""One table from the use cases' refusals to HTTP: status, stable code, the message in
the user's language, and Retry-After where waiting helps. No route maps errors itself."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse

from broker.access_policy import LockoutRefused, NetworkRefused, PolicyChanged
from broker.api_tokens import (
    TokenExpired,
    TokenNotFound,
    TokenOwnerNotAllowed,
    TokenRefused,
    TokenRevoked,
    TooManyTokens,
)
from broker.assignment import (
    AssignmentError,
    ConsoleUnsupported,
    DesktopNotReady,
    HostsUnavailable,
    NoCapacity,
    NotEntitled,
    PoolFull,
    PoolNotFound,
    Queued,
)
from broker.auth.directory import DirectoryUnavailable, InvalidCredentials
from broker.auth.throttle import Throttled
from broker.errors import (
    BadRequest,
    Forbidden,
    NoAccess,
    NoDesktop,
    NoMessage,
    NotSignedIn,
    RoleConflict,
)
from broker.helpdesk import ClerkNotFound, DesktopNotRunning, HostNotAnswering
from broker.helpdesk import DesktopNotFound as HelpdeskDesktopNotFound
from broker.image_imports import ImportNotFound
from broker.security_admin import SessionNotFound
from broker.system_admin import AdminConflict, AdminError, AdminInvalid, AdminNotFound
from web.i18n import gettext_for


def N_(message: str) -> str:
    """Marks a string for extraction; translated where the language is known."""
    return message


@dataclass(frozen=True)
class Answer:
    status: int
    code: str
    message: str
    retry_after: int | None = None


NOT_FOUND_POOL = Answer(404, "pool_not_found", N_("No such desktop pool for your account."))
# Looked up by exact class first, then along the class's ancestry (most specific wins).
ANSWERS: dict[type[Exception], Answer] = {
    NotSignedIn: Answer(401, "not_signed_in", N_("Please sign in.")),
    Forbidden: Answer(403, "forbidden", N_("This needs the admin or helpdesk role.")),
    BadRequest: Answer(400, "bad_request", N_("The request is malformed.")),
    InvalidCredentials: Answer(401, "invalid_credentials", N_("Wrong username or password.")),
    Throttled: Answer(429, "too_many_attempts",
                      N_("Too many failed sign-ins. Wait a few minutes and try again."), 300),
    DirectoryUnavailable: Answer(
        503, "directory_unavailable",
        N_("The directory is unavailable. Try again shortly or call the helpdesk.")),
    NoAccess: Answer(403, "no_access",
                     N_("Your account has no access to this service. Call the helpdesk.")),
    RoleConflict: Answer(
        403, "role_conflict",
        N_("Your account is in the groups of two administrator roles. No one may hold two, "
           "so neither is granted: ask the security administrator to correct your groups.")),
    PoolNotFound: NOT_FOUND_POOL,
    NotEntitled: NOT_FOUND_POOL,
    NoDesktop: Answer(404, "no_desktop", N_("You have no desktop in this pool.")),
    NoMessage: Answer(404, "no_message", N_("No such message.")),
    SessionNotFound: Answer(404, "session_not_found", N_("No such session is signed in.")),
    DesktopNotReady: Answer(
        503, "desktop_starting",
        N_("A desktop is being prepared for you. This takes a few seconds."), 2),
    HostsUnavailable: Answer(
        503, "host_unavailable",
        N_("The desktop servers are not answering. Try again shortly or call the helpdesk."),
        10),
    NoCapacity: Answer(
        503, "no_capacity",
        N_("The desktop servers are full. Try again later or call the helpdesk."), 30),
    PoolFull: Answer(
        409, "pool_full",
        N_("No desktop is free in this pool. Try again later or call the helpdesk.")),
    ConsoleUnsupported: Answer(
        409, "console_unsupported",
        N_("This desktop's console type cannot be opened here yet. Call the helpdesk.")),
    AssignmentError: Answer(500, "assignment_failed", N_("Could not assign a desktop.")),
    ImportNotFound: Answer(404, "import_not_found", N_("No such image import.")),
    TokenRefused: Answer(401, "token_invalid", N_("The API token is not valid.")),
    TokenExpired: Answer(401, "token_expired",
                         N_("The API token has expired. Make a new one in the console.")),
    TokenRevoked: Answer(401, "token_revoked",
                         N_("The API token was revoked. Make a new one in the console.")),
    TokenOwnerNotAllowed: Answer(
        401, "token_not_allowed",
        N_("The API token's owner no longer holds a role that may use API tokens.")),
    TokenNotFound: Answer(404, "token_not_found", N_("No such API token.")),
    TooManyTokens: Answer(409, "too_many_tokens",
                          N_("You have as many API tokens as one may have. Revoke one first.")),
    # the system administrator's operations: the operation's own explanation follows
    AdminInvalid: Answer(400, "invalid", N_("A value is not valid:")),
    AdminNotFound: Answer(404, "not_found", N_("Not found:")),
    AdminConflict: Answer(409, "conflict", N_("Not done:")),
    ClerkNotFound: Answer(404, "clerk_not_found",
                          N_("No such clerk among the offices you serve.")),
    HelpdeskDesktopNotFound: Answer(
        404, "desktop_not_found", N_("No such desktop in use among the offices you serve.")),
    DesktopNotRunning: Answer(
        409, "desktop_not_running",
        N_("The desktop is not running now (suspended or shut down while idle).")),
    HostNotAnswering: Answer(
        503, "host_unavailable",
        N_("The desktop servers are not answering. Try again shortly or call the helpdesk."),
        10),
    NetworkRefused: Answer(
        403, "network_not_allowed",
        N_("Administrator and helpdesk pages are not open from this network. Ask the "
           "security administrator.")),
    LockoutRefused: Answer(
        409, "would_lock_out",
        N_("This change would take away your own access: keep your own network in the "
           "admin networks and a group of yours in the security administrator's groups.")),
    PolicyChanged: Answer(
        409, "policy_changed",
        N_("Someone changed the policy meanwhile. Reload it and make your change again.")),
}
# refusals raised by the access seam itself (web.access) register here too
ANSWERS_BY_CODE: dict[str, Answer] = {
    "csrf": Answer(403, "csrf", N_("The request lacks a valid CSRF token.")),
    "bad_origin": Answer(403, "bad_origin", N_("This page may not sign in here.")),
    "bearer_not_here": Answer(
        403, "bearer_not_here",
        N_("API tokens are for the API: sign in to open pages, consoles and to make tokens.")),
}
# what a clerk waiting in a pool's queue is told besides (web: the page keeps waiting)
QUEUE_MESSAGES = {
    "desktop_starting": N_("You are number %(place)d in line for a desktop."),
    "pool_full": N_("You are number %(place)d in line; the page opens your desktop when "
                    "one comes free."),
}
# what a BadRequest may say (its message is shown, translated)
BAD_REQUEST_MESSAGES = (N_("Send a JSON object with username and password."),
                        N_("hours must be a number."),
                        N_("Send a JSON object with image and file."),
                        N_("Name a file in the import folder."),
                        N_("An import option is not valid."),
                        N_("The request is malformed."),
                        # the security administrator's policy (broker.access_policy)
                        N_("admin_networks must list at most 64 networks such as "
                           "10.20.0.0/16."),
                        N_("session_idle_s must be empty or 60 to 86400 seconds."),
                        N_("session_absolute_s must be empty or 300 to 604800 seconds."),
                        N_("session_idle_s must not be longer than session_absolute_s."),
                        N_("role_groups must be empty, or list for each role at most 50 "
                           "group DNs such as cn=helpdesk,ou=groups,dc=example."),
                        N_("role_groups.security_admin must name a group: without one no "
                           "one could change this policy again."),
                        N_("Give a reason of 4 to 500 characters."),
                        N_("Send a JSON object with policy, version and reason."),
                        # metering (broker.metering)
                        N_("from must be a date as YYYY-MM-DD."),
                        N_("to must be a date as YYYY-MM-DD."),
                        N_("day must be a date as YYYY-MM-DD."),
                        N_("from must not be after to."),
                        N_("A report covers at most 366 days."),
                        N_("by must be office or pool."),
                        N_("step_s must be one of 60, 300, 900, 1800, 3600."),
                        # API tokens (broker.api_tokens)
                        N_("Send a JSON object with name and days."),
                        N_("Give the token a name of 1 to 64 characters."),
                        N_("The expiry is a number of days, up to the longest allowed."),
                        N_("Send a JSON object with reason."))
UNKNOWN = Answer(500, "internal_error", N_("Something went wrong. Try again or call the helpdesk."))


def answer_for(error: Exception) -> Answer:
    for cls in type(error).__mro__:
        if cls in ANSWERS:
            return ANSWERS[cls]
    code = getattr(error, "code", None)
    if isinstance(code, str) and code in ANSWERS_BY_CODE:
        return ANSWERS_BY_CODE[code]
    return UNKNOWN


def error_response(conn: HTTPConnection, error: Exception) -> JSONResponse:
    a = answer_for(error)
    if isinstance(error, BadRequest) and str(error) in BAD_REQUEST_MESSAGES:
        a = Answer(a.status, a.code, str(error))
    if isinstance(error, Throttled):  # when one more attempt would be let through
        a = Answer(a.status, a.code, a.message, max(1, error.retry_after_s))
    if isinstance(error, AdminError):
        return json_error(conn, a, detail=error.detail)
    if isinstance(error, Queued) and error.place is not None and a.code in QUEUE_MESSAGES:
        return json_error(conn, a, place=error.place)
    return json_error(conn, a)


def json_error(conn: HTTPConnection, a: Answer, place: int | None = None,
               detail: str | None = None) -> JSONResponse:
    """The refusal as JSON; with `place`, the clerk's place in the pool's queue too; with
    `detail`, the operation's explanation after the message (and on its own)."""
    _ = gettext_for(conn).gettext
    headers = {"Retry-After": str(a.retry_after)} if a.retry_after is not None else None
    body: dict[str, object] = {"error": a.code, "message": _(a.message)}
    if detail is not None:
        body["message"] = f"{body['message']} {detail}"
        body["detail"] = detail
    if place is not None:
        body["place"] = place
        body["message"] = f"{body['message']} {_(QUEUE_MESSAGES[a.code]) % {'place': place}}"
    return JSONResponse(body, status_code=a.status, headers=headers)
