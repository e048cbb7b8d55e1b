"""The helpdesk's read-only view and its disconnect, end to end on the running broker,
a real libvirtd guest, real slapd and Chromium.

The clerk works at their desktop. The helpdesk member who serves them opens the
helpdesk console (1366x768; the events in words, the message form's button of normal
size), opens a read-only view of the desktop with a reason: the desktop shows in the
console, and the clerk's page says who is viewing. Through a second view, driven over
its websocket as a hostile client would (asking for the desktop exclusively, then
typing a shell command as key events, QEMU scancodes, pointer clicks and a paste), no
key reaches the guest, while the line the clerk types does, and the clerk's console
stays connected. A malformed message ends that view. When the views close the notice
goes. Then the helpdesk disconnects the clerk: their page says the helpdesk did it, the
clerk reconnects to the same desktop. Screenshots in zh-CN and English
(test-artifacts/)."""

from __future__ import annotations

import secrets
import struct
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page
from sqlalchemy import select
from websockets.sync.client import connect
from websockets.typing import Origin, Subprotocol

from tests.e2e.conftest import ARTIFACTS, HELPDESK_GROUP, PREFIX, Broker
from tests.e2e.test_clerk_desktop import serial_log, sign_in, type_shell_line, wait_for_text
from tests.e2e.test_pool_kinds import open_desktop
from tests.web.test_console import RfbClient, ServerInit
from vdi.db import make_engine, session_factory
from vdi.models import AuditRow

pytestmark = pytest.mark.e2e

REASON = "张三来电说桌面卡住，先只读查看"
CUT_REASON = "画面卡死，断开后请重新连接"
RESET_REASON = "重新连接后仍然卡死，恢复为镜像"
WORDS = {"zh_CN": {"console": "服务台控制台", "viewing": "服务台 王五 正在查看您的桌面",
                   "gone": "服务台（王五）断开了您与桌面的连接", "login": "登录",
                   "done": "已完成。"},
         "en": {"console": "Helpdesk console", "viewing": "Helpdesk 王五 is viewing your desktop",
                "gone": "The helpdesk (王五) disconnected you from your desktop",
                "login": "Signed in", "done": "Done."}}
VIEW_HAS_PIXELS = """() => {
  const c = document.querySelector('#viewer-screen canvas');
  if (!c || !c.width || !c.height) return false;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  for (let i = 0; i < d.length; i += 4 * 97) { if (d[i] || d[i + 1] || d[i + 2]) return true; }
  return false;
}"""
# XT scancodes (what noVNC sends in QEMU's extended key events) of what the line needs
SCANCODES = {**{c: code for c, code in zip("1234567890", range(0x02, 0x0C), strict=True)},
             **dict(zip("qwertyuiop", range(0x10, 0x1A), strict=True)),
             **dict(zip("asdfghjkl", range(0x1E, 0x27), strict=True)),
             **dict(zip("zxcvbnm", range(0x2C, 0x33), strict=True)),
             " ": 0x39, ".": 0x34, "/": 0x35, "-": 0x0C, "\n": 0x1C}
SHIFT = 0x2A
SHIFTED = {">": ".", "S": "s"}


def keysym_line(line: str) -> bytes:
    """The line as RFB KeyEvents (X keysyms, Shift held for shifted characters)."""
    out = bytearray()
    for ch in line:
        keysym = 0xFF0D if ch == "\n" else ord(ch)
        held = [0xFFE1] if ch in SHIFTED else []  # Shift_L
        for down, sym in [*((1, k) for k in held), (1, keysym), (0, keysym),
                          *((0, k) for k in held)]:
            out += struct.pack(">BBxxI", 4, down, sym)
    return bytes(out)


def scancode_line(line: str) -> bytes:
    """The line as QEMU's extended key events, as noVNC sends them (XT scancodes)."""
    out = bytearray()
    for ch in line:
        keysym = 0xFF0D if ch == "\n" else ord(ch)
        code = SCANCODES[SHIFTED.get(ch, ch)]
        presses = [(SHIFT, 1), (code, 1), (code, 0), (SHIFT, 0)] if ch in SHIFTED \
            else [(code, 1), (code, 0)]
        for key, down in presses:
            out += struct.pack(">BBHII", 255, 0, down, keysym, key)
    return bytes(out)


def hostile_view(broker: Broker) -> RfbClient:
    """A view opened by the helpdesk over its own websocket, asking for the desktop
    exclusively (ClientInit's shared flag 0)."""
    client = httpx.Client(base_url=broker.url, headers={"Origin": broker.url}, timeout=30)
    body = client.post("/api/session", json={"username": "wangwu",
                                             "password": "demo2026"}).json()
    desktop = next(r[0] for r in broker.desktops() if r[2] == "zhangsan")
    offer = client.post(f"/api/helpdesk/desktops/{desktop}/view", json={"reason": REASON},
                        headers={"X-CSRF-Token": body["csrf"]})
    assert offer.status_code == 200, offer.text
    cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    ws = connect("ws" + broker.url.removeprefix("http") + offer.json()["view"],
                 origin=Origin(broker.url), additional_headers={"Cookie": cookie},
                 subprotocols=[Subprotocol("binary")], max_size=None, open_timeout=10)
    client.close()
    rfb = RfbClient(ws)
    assert rfb.security_types() == [1]
    rfb.send(b"\x01")
    assert rfb.read(4) == b"\x00\x00\x00\x00"
    rfb.send(b"\x00")  # exclusive, please: the broker makes it shared
    width, height = struct.unpack(">HH", rfb.read(4))
    pixel_format = rfb.read(16)
    (name_length,) = struct.unpack(">I", rfb.read(4))
    rfb.init = ServerInit(width, height, pixel_format[0], rfb.read(name_length))
    return rfb


def audit(broker: Broker, action: str) -> list[AuditRow]:
    engine = make_engine(f"sqlite:///{Path(broker.env['VDI_STATE_DIR']) / 'vdi.sqlite3'}")
    try:
        with session_factory(engine)() as s:
            return list(s.scalars(select(AuditRow).where(AuditRow.action == action)))
    finally:
        engine.dispose()


def desktop_card(helpdesk: Page, broker: Broker, desktop_id: str, lang: str) -> None:
    sign_in(helpdesk, broker.url, "wangwu", "demo2026", lang)
    helpdesk.click(f"text={WORDS[lang]['console']}")
    helpdesk.wait_for_url(f"{broker.url}/helpdesk")
    helpdesk.fill("#q", "张三")
    helpdesk.click("#find button[type=submit]")
    helpdesk.click("text=张三 (zhangsan)")
    helpdesk.locator(".desktop-card", has_text=desktop_id).wait_for(timeout=10_000)


@pytest.mark.parametrize("lang", ["zh_CN", "en"])
def test_a_read_only_view_never_types_and_a_disconnect_is_said_on_the_clerks_page(
        broker: Broker, browser: Browser, lang: str) -> None:
    words = WORDS[lang]
    ARTIFACTS.mkdir(exist_ok=True)
    broker.vdi("office-set", "dongjie", "--name", "东街街道办", "--clerk-group",
               "cn=dongjie-window,ou=groups,dc=district,dc=example", "--helpdesk-group",
               HELPDESK_GROUP)
    locale = "zh-CN" if lang == "zh_CN" else "en-US"
    clerk = browser.new_context(locale=locale, viewport={"width": 1280, "height": 800}
                                ).new_page()
    sign_in(clerk, broker.url, "zhangsan", "demo2026", lang)
    desktop_id = open_desktop(clerk, broker, "window")
    serial = serial_log(PREFIX + desktop_id)

    helpdesk = browser.new_context(locale=locale, viewport={"width": 1366, "height": 768}
                                   ).new_page()
    desktop_card(helpdesk, broker, desktop_id, lang)
    card = helpdesk.locator(".desktop-card", has_text=desktop_id)
    # the console's polish: the events in words, the message's button of normal size
    whats = helpdesk.locator("#events tr td:nth-child(2)").all_inner_texts()
    assert words["login"] in whats and "login" not in whats and "connect" not in whats
    send, form = card.locator("form.send button").bounding_box(), card.locator(
        "form.send").bounding_box()
    assert send is not None and form is not None and send["width"] < form["width"] / 3
    helpdesk.screenshot(path=str(ARTIFACTS / f"e2e-helpdesk-console-1366-{lang}.png"),
                        full_page=True)

    # a read-only view in the console: the desktop shows, the clerk's page says who
    helpdesk.once("dialog", lambda dialog: dialog.accept(REASON))
    card.locator("button[data-view]").click()
    helpdesk.wait_for_function(VIEW_HAS_PIXELS, timeout=30_000, polling=100)
    notice = clerk.locator("#viewing")
    notice.wait_for(state="visible", timeout=20_000)  # the page asks every 5 s
    assert notice.inner_text() == words["viewing"]
    helpdesk.screenshot(path=str(ARTIFACTS / f"e2e-helpdesk-view-{lang}.png"))
    clerk.screenshot(path=str(ARTIFACTS / f"e2e-helpdesk-viewing-notice-{lang}.png"))

    # a view driven as a hostile client: nothing it types reaches the guest
    connected_at = clerk.evaluate("() => window.vdiTimings.connected")
    view = hostile_view(broker)
    view.wait_update()
    markers = ["view" + "".join(secrets.choice("abcdefghkmnpqrstuvwxyz") for _ in range(8))
               for _ in range(2)]
    view.send(struct.pack(">BBHH", 5, 1, 200, 200) + struct.pack(">BBHH", 5, 0, 200, 200))
    view.send(keysym_line(f"echo {markers[0]} > /dev/ttyS0\n"))
    view.send(scancode_line(f"echo {markers[1]} > /dev/ttyS0\n"))
    paste = f"echo {markers[0]} > /dev/ttyS0\n".encode()
    view.send(struct.pack(">BxxxI", 6, len(paste)) + paste)
    view.wait_update()  # still open: the broker dropped the input, not the view
    clerk_marker = f"clerk-{secrets.token_hex(4)}"
    clerk.click("#screen canvas")
    type_shell_line(clerk, f"echo {clerk_marker} > /dev/ttyS0")
    assert wait_for_text(serial, clerk_marker, 30), "the clerk's keys never reached the VM"
    arrived = serial.read_text(errors="replace")
    assert not [m for m in markers if m in arrived], "the view's keys reached the VM"
    assert clerk.evaluate("() => window.vdiTimings.connected") == connected_at, (
        "the clerk's console was dropped while the view was open")
    view.send(bytes([77]))  # not an RFB message: the view ends
    assert view.wait_closed() is not None

    helpdesk.click("#viewer-close")
    notice.wait_for(state="hidden", timeout=20_000)
    starts = [a for a in audit(broker, "helpdesk-watch-start") if a.outcome == "ok"]
    ends = audit(broker, "helpdesk-watch-end")
    assert len(starts) >= 2 and all(f"reason: {REASON}" in a.detail for a in starts)
    assert any("protocol error from browser" in a.detail for a in ends)
    assert len(ends) >= 2 and all(a.actor == "wangwu" for a in starts + ends)

    # the helpdesk disconnects the clerk: their page says who, they reconnect
    helpdesk.once("dialog", lambda dialog: dialog.accept(CUT_REASON))
    card.locator("button[data-action=disconnect]").click()
    card.locator(".result", has_text=words["done"]).wait_for(timeout=10_000)
    said = clerk.locator("#notice")
    said.wait_for(state="visible", timeout=20_000)
    assert words["gone"] in said.inner_text()
    assert clerk.locator("#reconnect").is_visible()
    clerk.screenshot(path=str(ARTIFACTS / f"e2e-helpdesk-disconnected-{lang}.png"))
    rows = {row[0]: row for row in broker.desktops()}
    assert rows[desktop_id][1] == "assigned" and rows[desktop_id][2] == "zhangsan"
    time.sleep(1)
    assert said.is_visible(), "the page reconnected by itself"
    clerk.click("#reconnect")
    clerk.wait_for_function(f"() => window.vdiTimings.connected > {connected_at}",
                            timeout=30_000)
    assert clerk.locator("#screen").get_attribute("data-desktop") == desktop_id
    assert not said.is_visible()
    [cut] = [a for a in audit(broker, "helpdesk-disconnect") if CUT_REASON in a.detail][-1:]
    assert cut.actor == "wangwu" and cut.target == desktop_id

    # still frozen: the helpdesk resets the desktop to its image
    helpdesk.once("dialog", lambda dialog: dialog.accept(RESET_REASON))
    card.locator(".result").evaluate("el => { el.textContent = ''; }")
    card.locator("button[data-action=reset]").click()
    card.locator(".result", has_text=words["done"]).wait_for(timeout=30_000)
    helpdesk.context.close()
    clerk.context.close()

    # the audit administrator sees the helpdesk's acts with their reasons, and exports them
    auditor = browser.new_context(locale=locale, viewport={"width": 1366, "height": 900},
                                  accept_downloads=True).new_page()
    sign_in(auditor, broker.url, "zhengshi", "demo2026", lang)
    auditor.goto(f"{broker.url}/audit")
    auditor.fill("#trail-filter input[name=actor]", "wangwu")
    auditor.click("#trail-filter button[type=submit]")
    for action, reason in (("helpdesk-watch-start", REASON),
                           ("helpdesk-disconnect", CUT_REASON),
                           ("helpdesk-reset", RESET_REASON)):
        auditor.locator("#trail tbody tr", has_text=action).filter(
            has_text=reason).first.wait_for(timeout=10_000)
    auditor.screenshot(path=str(ARTIFACTS / f"e2e-audit-helpdesk-acts-{lang}.png"))
    with auditor.expect_download() as got:
        auditor.click("#trail-csv")
    exported = got.value.path().read_bytes().decode("utf-8")
    assert all(r in exported for r in (REASON, CUT_REASON, RESET_REASON))
    assert all(line.split(",")[2] == "wangwu" for line in exported.splitlines()[1:] if line)
    auditor.context.close()
