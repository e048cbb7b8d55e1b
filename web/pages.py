"""HTML pages: sign-in, the clerk's portal, the desktop page and the consoles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from broker.access import allows
from vdi.domain import Permission
from web.access import PUBLIC, Access, Call, cookie_name, route
from web.i18n import LANG_COOKIE, LANGUAGES, pick_language, translations

TEMPLATES = Path(__file__).with_name("templates")


def N_(message: str) -> str:
    """Marks a string for extraction; translated later, where the language is known."""
    return message


# Strings the page scripts show; translated server-side and handed over as JSON.
JS_STRINGS = (
    N_("Signing in…"),
    N_("Wrong username or password."),
    N_("Connecting to your desktop…"),
    N_("A desktop is being prepared for you. This takes a few seconds."),
    N_("Connected"),
    N_("Disconnected. Reconnecting…"),
    N_("The connection to the desktop was lost."),
    N_("Reconnect"),
    N_("Something went wrong. Try again or call the helpdesk."),
    N_("Please fill in both fields."),
    N_("Log off now? The desktop is reset for the next clerk: unsaved work is lost."),
    N_("Log off now? Your desktop and its files stay as they are for next time."),
    N_("Logging off…"),
    # the idle policy (desktop.js, common.js noticeText)
    N_("No keyboard or mouse input for a while. Your desktop will be taken back when the "
       "time runs out."),
    N_("Time left: {time}"),
    # the helpdesk's message on the desktop page (desktop.js)
    N_("Message from the helpdesk ({name}):"),
    # the helpdesk console (helpdesk.js)
    N_("Searching…"),
    N_("No clerk found among the offices you serve."),
    N_("Street office: {offices}"),
    N_("No desktop in use."),
    N_("Pool {pool} · {state} · {addresses}"),
    N_("Why? ({action}; it is recorded)"),
    N_("Done."),
    N_("Message sent."),
    N_("Signed in"),
    N_("Signed out"),
    N_("Asked for their desktop"),
    N_("Desktop connection"),
    N_("Logged off the desktop"),
    N_("Session ended (directory check)"),
    N_("Roles changed (directory check)"),
    N_("Disconnected by the idle policy"),
    N_("Logged off by the idle policy"),
    N_("Shut down by the idle policy"),
    N_("Suspended by the idle policy"),
    N_("Succeeded"),
    N_("Closed"),
    N_("Refused"),
    # the read-only view (helpdesk.js) and what the clerk's page says of it (desktop.js)
    N_("Viewing {desktop} (read-only)"),
    N_("Connecting…"),
    N_("The view has ended."),
    N_("Helpdesk {name} is viewing your desktop"),
    N_(", "),
    N_("The helpdesk ({name}) disconnected you from your desktop. It is still running: "
       "press Reconnect to go on."),
    N_("Your desktop was disconnected at {time}."),
    N_("Your desktop was logged off at {time} and reset for the next clerk."),
    N_("Your desktop was shut down at {time}. Your files are kept; connecting starts it again."),
    N_("Your desktop was suspended at {time}. Connecting resumes it where you left it."),
    N_("Reason: no keyboard or mouse input for {duration}."),
    N_("Reason: it stayed disconnected for {duration}."),
    N_("{n} min"),
    N_("{n} s"),
    # the audit trail and the metering report (audit.js)
    N_("Loading…"),
    N_("No record matches."),
    N_("Checking…"),
    N_("The chain is intact: {n} records, none edited, deleted or reordered."),
    N_("The chain is broken: {problems}"),
    N_("Succeeded"),
    N_("Refused"),
    N_("Failed"),
    N_("Broken"),
    N_("District"),
    N_("Desktop-hours"),
    N_("Desktop pool"),
    N_("Street office"),
    N_("No desktop was used in these days."),
    # the security administrator's sessions page (security.js)
    N_("Clerk"),
    N_("Helpdesk"),
    N_("System administrator"),
    N_("Security administrator"),
    N_("Audit administrator"),
    N_("End session"),
    N_("{n} signed in."),
    N_("No one matches."),
    N_("Why end the session of {name}? (it is recorded)"),
    N_("The session of {name} was ended."),
    N_("Empty: the configuration file's {idle} s idle, {absolute} s at most."),
    N_("Version {version}, changed by {who} at {when}"),
    N_("Never changed: the configuration file applies."),
    N_("Saved: version {version}. Every broker follows it within seconds."),
    # API tokens (tokens.js)
    N_("Never"),
    N_("expired"),
    N_("Revoke"),
    N_("Revoke the token {name}? What uses it stops at once."),
    N_("Why revoke it? (it is recorded)"),
    N_("Copied."),
    # the system administrator's console (admin.js, admin/*.js)
    N_("{n} of at most {max}"),
    N_("{n} of at most {max} desktops · keeps {min} ready"),
    N_("Memory"),
    N_("vCPUs"),
    N_("No pool yet: create one under Pools."),
    N_("No host has been seen yet."),
    N_("Nothing needs attention."),
    N_("Updated {time}"),
    N_("Desktop {id} belongs to {clerk}. Remove it with its disk? Everything on it is lost."),
    N_("Remove desktop {id}? The pool makes a fresh one when it needs one."),
    N_("Desktop {id} is being removed."),
    N_("Remove"),
    N_("No desktop."),
    N_("End maintenance"),
    N_("Host {host} takes desktops again."),
    N_("Maintenance"),
    N_("Stop placing new desktops on {host}?"),
    N_("Host {host} is in maintenance: no new desktop goes there."),
    N_("Drain"),
    N_("Drain {host}? Its desktops are moved to other hosts (dedicated ones live-migrated)."),
    N_("Host {host} is being drained."),
    N_("{field} is needed."),
    N_("Host {host} added; the broker asks it for its capacity within seconds."),
    N_("Release"),
    N_("Release {image} v{version}? Pools that follow the image get it as their desktops "
       "are made afresh."),
    N_("{image} v{version} released."),
    N_("Try in pool"),
    N_("Try in pool…"),
    N_("Pool {pool} now runs v{version} (a trial)."),
    N_("End the trial"),
    N_("Pool {pool} follows the released version again."),
    N_("released: v{version}"),
    N_("not released"),
    N_("Roll back"),
    N_("Roll {image} back to the version released before?"),
    N_("{image} is back at v{version}."),
    N_("Pools following the release: {pools}"),
    N_("Version"),
    N_("State"),
    N_("Kind"),
    N_("Disk"),
    N_("Hosts"),
    N_("Imported"),
    N_("Trial in"),
    N_("No image imported yet."),
    N_("Choose a file…"),
    N_("The import folder is empty."),
    N_("Imported as v{version}."),
    N_("Image {image} imported."),
    N_("The import failed: {message}"),
    N_("Choose a file and name the image."),
    N_("Checking the file"),
    N_("Copying"),
    N_("Converting"),
    N_("Checking the contents"),
    N_("Uploading to {host}"),
    N_("Done"),
    N_("{vcpus} vCPU · {memory} MiB · {min}-{max} desktops"),
    N_("{image} v{version} (trial)"),
    N_("Edit"),
    N_("Pool {id}"),
    N_("New pool"),
    N_("Pool ID: 1-32 letters, digits or '-'."),
    N_("Give the pool a name."),
    N_("Name the image the pool runs."),
    N_("{field}: a whole number."),
    N_("Saved."),
    N_("Pool created."),
    N_("Staff"),
    N_("Nobody is signed in."),
    N_("Desktops in use"),
    N_("No desktop was in use that day."),
    N_("No usage figures for this day."),
    N_("{n} h"),
    N_("{n} d"),
    N_("Ready"),
    N_("Booting"),
    N_("In use"),
    N_("Disconnected"),
    N_("Reclaiming"),
    N_("Faulty"),
    N_("Deleted"),
    N_("Up"),
    N_("Down"),
    N_("Not seen yet"),
    N_("Released"),
    N_("Previous"),
    N_("Available"),
    N_("Floating"),
    N_("Dedicated"),
    N_("Desktop failed"),
    N_("Host down"),
    N_("Host in maintenance"),
    N_("Domains the broker did not make"),
)


# the consoles a signed-in person's roles open, linked from their start page (the first
# one they may open of those that lead to the same place)
CONSOLES = (
    ("/admin", Permission.VIEW_SERVICE, N_("System administration console")),
    ("/helpdesk", Permission.HELPDESK, N_("Helpdesk console")),
    ("/audit", Permission.READ_AUDIT, N_("Audit trail and reports")),
    ("/reports", Permission.READ_METERING, N_("Desktop use reports")),
    ("/security", Permission.MANAGE_SESSIONS, N_("Who is signed in")),
    ("/tokens", Permission.API_TOKENS, N_("API tokens")),
)


def _environment(lang: str) -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES),
                      autoescape=select_autoescape(["html"]),
                      extensions=["jinja2.ext.i18n"])
    env.install_gettext_translations(translations(lang), newstyle=True)  # type: ignore[attr-defined]
    return env


_ENVIRONMENTS = {lang: _environment(lang) for lang in LANGUAGES}


def render(request: Request, name: str, **context: Any) -> Response:
    lang = pick_language(request)
    gt = translations(lang).gettext
    strings = {s: gt(s) for s in JS_STRINGS}
    html = _ENVIRONMENTS[lang].get_template(name).render(
        lang=lang, html_lang="zh-CN" if lang == "zh_CN" else "en",
        js_strings=json.dumps(strings, ensure_ascii=False), path=request.url.path,
        asset=request.app.state.assets.url, **context)
    response = HTMLResponse(html, headers={
        "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                   "connect-src 'self'; style-src 'self'; "
                                   "frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"})
    chosen = request.query_params.get("lang")
    if chosen in LANGUAGES:
        response.set_cookie(LANG_COOKIE, chosen, max_age=365 * 86400, samesite="lax")
    return response


async def home(call: Call) -> Response:
    session = await call.api.signin.session(call.request.cookies.get(cookie_name(call.settings)))
    if session is None:
        return render(call.request, "login.html")
    # the consoles, from the admin networks only (elsewhere they refuse: no link)
    admitted = (await call.api.policy.current()).admits(call.source)
    consoles = [(href, label) for href, permission, label in CONSOLES
                if admitted and allows(session.principal, permission)]
    if any(href == "/audit" for href, _ in consoles):  # the audit page has the reports
        consoles = [(href, label) for href, label in consoles if href != "/reports"]
    return render(call.request, "portal.html", user=session.principal, consoles=consoles)


async def desktop_page(call: Call) -> Response:
    pool_id = call.request.path_params["pool"]
    kind = await call.api.portal.pool_kind(call.signed_in, pool_id)
    return render(call.request, "desktop.html", user=call.signed_in.principal,
                  pool=pool_id, kind=kind.value if kind is not None else "",
                  csrf=call.signed_in.csrf)


async def helpdesk_page(call: Call) -> Response:
    return render(call.request, "helpdesk.html", user=call.signed_in.principal,
                  csrf=call.signed_in.csrf)


async def audit_page(call: Call) -> Response:
    return render(call.request, "audit.html", user=call.signed_in.principal,
                  show_audit=True, title=translations(pick_language(call.request)).gettext(
                      "Audit trail and reports"))


async def reports_page(call: Call) -> Response:
    return render(call.request, "audit.html", user=call.signed_in.principal,
                  show_audit=False, title=translations(pick_language(call.request)).gettext(
                      "Desktop use reports"))


async def security_page(call: Call) -> Response:
    return render(call.request, "security.html", user=call.signed_in.principal,
                  csrf=call.signed_in.csrf)
async def tokens_page(call: Call) -> Response:
    principal = call.signed_in.principal
    return render(call.request, "tokens.html", user=principal, csrf=call.signed_in.csrf,
                  max_days=call.api.api_tokens.max_days,
                  everyone=allows(principal, Permission.MANAGE_SESSIONS))


# what the idle policy may do, as the pool form offers it (pools.reclaim.Action)
POLICY_ACTIONS = (("nothing", N_("Nothing")), ("disconnect", N_("Disconnect")),
                  ("log_off", N_("Log off")), ("shut_down", N_("Shut down")),
                  ("suspend", N_("Suspend")))


async def admin_page(call: Call) -> Response:
    gt = translations(pick_language(call.request)).gettext
    return render(call.request, "admin.html", user=call.signed_in.principal,
                  csrf=call.signed_in.csrf,
                  actions=[(value, gt(name)) for value, name in POLICY_ACTIONS])


routes: list[Route] = [
    route("/", "GET", PUBLIC, home),
    route("/tokens", "GET", Access(Permission.API_TOKENS, redirect="/"), tokens_page),
    route("/helpdesk", "GET", Access(Permission.HELPDESK, redirect="/"), helpdesk_page),
    route("/audit", "GET", Access(Permission.READ_AUDIT, redirect="/"), audit_page),
    route("/reports", "GET", Access(Permission.READ_METERING, redirect="/"), reports_page),
    route("/security", "GET", Access(Permission.MANAGE_SESSIONS, redirect="/"), security_page),
    route("/admin", "GET", Access(Permission.VIEW_SERVICE, redirect="/"), admin_page),
    route("/desktop/{pool}", "GET", Access(Permission.SIGNED_IN, redirect="/"), desktop_page),
]
