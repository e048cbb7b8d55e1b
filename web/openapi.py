"""The broker's OpenAPI 3.1 document, generated from the app's routes: each API route's
method, path, parameters and who may call it come from the route itself (its
web.access declaration); what the route takes and gives is described once, here, in
`DOCS` (a route of the API without an entry fails tests/web/test_openapi.py). Served at
/api/openapi.json to anyone signed in; the `vdi` CLI and a district's own tools read it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from web.access import READ, Access, Call, app_settings, cookie_name, route

Schema = dict[str, Any]
STRING: Schema = {"type": "string"}
TEXT64: Schema = {"type": "string", "minLength": 1, "maxLength": 64}
NUMBER: Schema = {"type": "number"}
INTEGER: Schema = {"type": "integer"}
OBJECT: Schema = {"type": "object"}
BOOLEAN: Schema = {"type": "boolean"}
VERSION: Schema = {"type": "integer", "minimum": 1}
TEXTS: Schema = {"type": "array", "items": STRING, "maxItems": 100}
ERROR: Schema = {"type": "object", "required": ["error", "message"], "properties": {
    "error": STRING, "message": STRING}}


@dataclass(frozen=True)
class Doc:
    summary: str
    tag: str
    query: dict[str, Schema] = field(default_factory=dict)
    body: Schema | None = None
    ok: int = 200
    answer: str = "application/json"  # the media type of a successful answer


def _body(required: list[str], **props: Schema) -> Schema:
    return {"type": "object", "required": required, "properties": props}


# what a pool is made of, as the admin console sends it
POOL: dict[str, Schema] = {
    "id": STRING, "name": STRING, "image": STRING,
    "kind": {"type": "string", "enum": ["floating", "dedicated"]}, "vcpus": INTEGER,
    "memory_mib": INTEGER, "min_ready": INTEGER, "max_size": INTEGER, "groups": TEXTS,
    "hosts": TEXTS, "image_version": {"type": ["integer", "null"]},
    "boot_timeout_s": INTEGER, "secure_boot": BOOLEAN, "network": STRING,
    "user_data": STRING, "office": {"type": ["string", "null"]},
    "policy": {"type": "object", "description": "the policy file's tables: calendar, "
               "shifts, spares (docs/idle-policy.md)"}}


DOCS: dict[tuple[str, str], Doc] = {
    ("POST", "/api/session"): Doc(
        "Sign in with the directory account", "session",
        body=_body(["username", "password"], username=STRING, password=STRING)),
    ("GET", "/api/session"): Doc("The signed-in user, roles and CSRF token", "session"),
    ("DELETE", "/api/session"): Doc("Sign out", "session"),
    ("GET", "/api/pools"): Doc("The pools the user may use, with their desktop", "clerk"),
    ("POST", "/api/pools/{pool}/connect"): Doc(
        "A desktop of the pool and a one-time console grant", "clerk"),
    ("POST", "/api/pools/{pool}/logoff"): Doc("End the use of one's desktop", "clerk"),
    ("GET", "/api/pools/{pool}/status"): Doc(
        "One's desktop: an idle warning to count down, or why it went away", "clerk"),
    ("POST", "/api/pools/{pool}/still-here"): Doc("Answer the idle warning", "clerk"),
    ("GET", "/api/admin/reclaims"): Doc(
        "What the idle policy took back, newest first", "admin",
        query={"hours": NUMBER, "pool": STRING, "user": STRING}),
    ("GET", "/api/admin/dashboard"): Doc(
        "Each pool's desktops by what they do, each host's load and state, alerts", "admin"),
    ("POST", "/api/admin/images"): Doc(
        "Import a golden image file of the import folder (runs in the background)",
        "admin", ok=202, body=_body(
            ["image", "file"], image=STRING, file=STRING, format=STRING, firmware=STRING,
            os=STRING, arch=STRING, virtio={"type": "boolean"}, agent={"type": "boolean"},
            boot_delay_s=INTEGER, secure_boot={"type": "boolean"})),
    ("GET", "/api/admin/images/imports/{import_id}"): Doc(
        "An image import's stage and percentage", "admin"),
    ("GET", "/api/admin/images"): Doc(
        "Every image with its versions: released, the one before, trials", "admin"),
    ("GET", "/api/admin/images/files"): Doc(
        "The files of the import folder an import may name", "admin"),
    ("POST", "/api/admin/images/{image}/release"): Doc(
        "Release a version to the pools that follow the image", "admin",
        body=_body(["version"], version=VERSION)),
    ("POST", "/api/admin/images/{image}/rollback"): Doc(
        "Release the newest version older than the released one", "admin"),
    ("POST", "/api/admin/images/{image}/trial"): Doc(
        "Pin a pool to a version (a trial), or with null let it follow the release",
        "admin", body=_body(["pool", "version"], pool=STRING,
                            version={"type": ["integer", "null"], "minimum": 1})),
    ("GET", "/api/admin/pools"): Doc("Every pool with its idle policy and spares", "admin"),
    ("POST", "/api/admin/pools"): Doc(
        "Create a pool", "admin", ok=201, body=_body(["id", "name", "image"], **POOL)),
    ("GET", "/api/admin/pools/{pool}"): Doc("A pool with its idle policy and spares",
                                            "admin"),
    ("PATCH", "/api/admin/pools/{pool}"): Doc(
        "Change a pool: only the values sent", "admin", body=_body([], **POOL)),
    ("GET", "/api/admin/hosts"): Doc("Every host with its state and load", "admin"),
    ("POST", "/api/admin/hosts"): Doc(
        "Register a host, or change how it is reached", "admin", ok=201,
        body=_body(["uri", "name", "graphics_listen"], uri=STRING, name=STRING,
                   graphics_listen=STRING, storage_pool=STRING, storage_dir=STRING,
                   log_dir=STRING, shared_storage=BOOLEAN)),
    ("POST", "/api/admin/hosts/{host}/maintenance"): Doc(
        "Maintenance on or off, or drain (on, and the desktops moved off)", "admin",
        body=_body(["mode"], mode={"type": "string", "enum": ["on", "off", "drain"]})),
    ("GET", "/api/admin/desktops"): Doc(
        "Every desktop: state, clerk, host, addresses, age", "admin"),
    ("POST", "/api/admin/desktops/{desktop_id}/remove"): Doc(
        "Remove a desktop (the pool makes a fresh one when it needs one)", "admin",
        body=_body(["even_if_held"], even_if_held=BOOLEAN)),
    ("GET", "/api/admin/sessions"): Doc(
        "Who is signed in, from where, using which desktop (read only)", "admin"),
    ("GET", "/api/admin/audit"): Doc(
        "A page of the audit trail, newest first", "audit",
        query={"days": NUMBER, "actor": STRING, "action": STRING, "outcome": STRING,
               "limit": INTEGER, "before": INTEGER}),
    ("GET", "/api/admin/audit.csv"): Doc(
        "The audit trail as CSV, oldest first", "audit", answer="text/csv",
        query={"days": NUMBER, "actor": STRING, "action": STRING, "outcome": STRING}),
    ("GET", "/api/admin/audit/verify"): Doc("Check the audit trail's hash chain", "audit"),
    ("GET", "/api/admin/metering"): Doc(
        "Desktop-hours and sessions per office or pool over a range of days", "reports",
        query={"from": STRING, "to": STRING, "by": {"type": "string",
                                                    "enum": ["office", "pool"]}}),
    ("GET", "/api/admin/metering.csv"): Doc(
        "The metering report as CSV", "reports", answer="text/csv",
        query={"from": STRING, "to": STRING, "by": {"type": "string",
                                                    "enum": ["office", "pool"]}}),
    ("GET", "/api/admin/usage"): Doc(
        "Desktops in use at each step of one day, up to now", "admin",
        query={"day": STRING, "step_s": INTEGER}),
    ("GET", "/api/helpdesk/clerks"): Doc(
        "Find clerks of the offices one serves by account or name", "helpdesk",
        query={"q": TEXT64}),
    ("GET", "/api/helpdesk/clerks/{username}"): Doc(
        "A served clerk's desktops and last days' events", "helpdesk"),
    ("GET", "/api/helpdesk/desktops/{desktop_id}/screen"): Doc(
        "The screen of a served clerk's desktop in use", "helpdesk", answer="image/png"),
    ("POST", "/api/helpdesk/desktops/{desktop_id}/actions"): Doc(
        "Reboot, log off, reset or disconnect a served clerk's desktop, with a reason",
        "helpdesk", body=_body(["action", "reason"], action={
            "type": "string", "enum": ["reboot", "logoff", "reset", "disconnect"]},
                   reason={"type": "string", "minLength": 4, "maxLength": 500})),
    ("POST", "/api/helpdesk/desktops/{desktop_id}/view"): Doc(
        "A one-time websocket path for a read-only view of a served clerk's desktop, "
        "with a reason", "helpdesk", body=_body(
            ["reason"], reason={"type": "string", "minLength": 4, "maxLength": 500})),
    ("POST", "/api/helpdesk/desktops/{desktop_id}/messages"): Doc(
        "A message shown on the clerk's desktop page until acknowledged", "helpdesk",
        body=_body(["text"], text={"type": "string", "minLength": 1, "maxLength": 500})),
    ("POST", "/api/pools/{pool}/messages/{message_id}/seen"): Doc(
        "Acknowledge the helpdesk's message", "clerk"),
    ("GET", "/api/security/sessions"): Doc(
        "Who is signed in, from where, using which desktop", "security"),
    ("POST", "/api/security/sessions/{handle}/end"): Doc(
        "End a session, with a reason", "security",
        body=_body(["reason"], reason={"type": "string", "minLength": 4, "maxLength": 500})),
    ("GET", "/api/security/policy"): Doc(
        "The access policy (admin networks, session limits, role groups), its version and "
        "the settings that apply where it is silent", "security"),
    ("PUT", "/api/security/policy"): Doc(
        "Change the access policy (compare-and-set on its version), with a reason",
        "security", body=_body(
            ["policy", "version", "reason"], version=INTEGER,
            reason={"type": "string", "minLength": 4, "maxLength": 500},
            policy={"type": "object", "properties": {
                "admin_networks": {"type": "array", "items": STRING},
                "session_idle_s": {"type": ["integer", "null"]},
                "session_absolute_s": {"type": ["integer", "null"]},
                "role_groups": {"type": ["object", "null"]}}})),
    ("GET", "/api/tokens"): Doc("One's API tokens (never their secrets)", "tokens"),
    ("POST", "/api/tokens"): Doc(
        "Make an API token: its secret is in this answer only", "tokens", ok=201,
        body=_body(["name", "days"], name={"type": "string", "minLength": 1, "maxLength": 64},
                   days={"type": "integer", "minimum": 1})),
    ("DELETE", "/api/tokens/{token_id}"): Doc("Revoke one of one's API tokens", "tokens"),
    ("GET", "/api/security/tokens"): Doc("Everyone's live API tokens", "security"),
    ("POST", "/api/security/tokens/{token_id}/revoke"): Doc(
        "Revoke anyone's API token, with a reason", "security",
        body=_body(["reason"], reason={"type": "string", "minLength": 4, "maxLength": 500})),
    ("GET", "/api/openapi.json"): Doc("This document", "meta"),
    ("GET", "/healthz"): Doc("Whether the broker and its database answer", "meta"),
}
# the status codes a refusal can have, by what the route needs
_REFUSALS = {400: "The request is malformed", 404: "Not found (or not yours to see)",
             409: "Not possible as things are (the message says why)",
             429: "Too many attempts", 503: "A part the broker needs does not answer now"}


def is_api(path: str) -> bool:
    return path.startswith("/api/") or path == "/healthz"


def document(routes: list[BaseRoute], cookie: str) -> dict[str, Any]:
    """The OpenAPI document of the API routes among `routes`."""
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        if not isinstance(r, Route) or not is_api(r.path):
            continue
        access: Access | None = getattr(r.endpoint, "access", None)
        for method in sorted((r.methods or set()) - {"HEAD"}):
            doc = DOCS.get((method, r.path))
            if doc is None or access is None:
                continue  # tests/web/test_openapi.py fails on such a route
            paths.setdefault(r.path, {})[method.lower()] = _operation(r.path, method, doc,
                                                                      access)
    return {
        "openapi": "3.1.0",
        "info": {"title": "VDI connection broker", "version": "1",
                 "description": "Sign-in, desktops and consoles for the clerks; the "
                                "helpdesk's, administrators' and auditors' views."},
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR},
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": cookie},
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "a personal API token (vdi_...), made in the "
                                          "console: no CSRF token then"},
                "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token"}}},
    }


def _operation(path: str, method: str, doc: Doc, access: Access) -> dict[str, Any]:
    params = [{"name": name, "in": "path", "required": True,
               "schema": {"type": "string", "minLength": 1, "maxLength": 128}}
              for name in re.findall(r"{(\w+)}", path)]
    params += [{"name": name, "in": "query", "required": False, "schema": schema}
               for name, schema in doc.query.items()]
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    responses: dict[str, Any] = {str(doc.ok): {
        "description": doc.summary,
        "content": {doc.answer: {"schema": OBJECT if doc.answer == "application/json"
                                 else STRING}}}}
    for code, text in _REFUSALS.items():
        responses[str(code)] = {"description": text, "content": error}
    if access.permission is not None:
        responses["401"] = {"description": "Not signed in, or the API token is not valid "
                                           "(expired, revoked)", "content": error}
        responses["403"] = {"description": "The role does not allow it, or a missing "
                                           "CSRF token", "content": error}
    elif access.origin:
        responses["403"] = {"description": "From a page of another origin", "content": error}
    op_id = method.lower() + "_" + re.sub(r"\W+", "_", path).strip("_")
    op: dict[str, Any] = {"summary": doc.summary, "tags": [doc.tag], "operationId": op_id,
                          "parameters": params, "responses": responses,
                          "x-permission": access.permission.value if access.permission
                          else None}
    if access.permission is not None:
        op["security"] = [{"session": [], "csrf": []} if access.csrf else {"session": []}]
        if access.bearer:
            op["security"].append({"bearer": []})
    if doc.body is not None:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": doc.body}}}
    return op


async def serve(call: Call) -> Response:
    request: Request = call.request
    return JSONResponse(document(request.app.routes,
                                 cookie_name(app_settings(request))))


# for those signed in: the list of routes is nothing a stranger needs
routes: list[Route] = [route("/api/openapi.json", "GET", READ, serve)]
