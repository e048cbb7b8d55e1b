"""HTML pages: sign-in, the clerk's portal and the desktop page."""

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
)


# the consoles a signed-in person's roles open, linked from their start page
CONSOLES = (("/helpdesk", Permission.HELPDESK),)


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
    consoles = [href for href, permission in CONSOLES if allows(session.principal, permission)]
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


routes: list[Route] = [
    route("/", "GET", PUBLIC, home),
    route("/helpdesk", "GET", Access(Permission.HELPDESK, redirect="/"), helpdesk_page),
    route("/desktop/{pool}", "GET", Access(Permission.SIGNED_IN, redirect="/"), desktop_page),
]
