"""A window clerk signs in through the page and types into the pooled desktop; the
typed command reaches the VM (it writes to the guest's serial port, which libvirt logs)
and the broker records the input on the desktop (what the idle policy reads)."""

from __future__ import annotations

import json
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from broker.tunnel import INPUT_REPORT_INTERVAL_S
from tests.e2e.conftest import ARTIFACTS, PREFIX, Broker, wait_ready_spare
from vdi.db import make_engine, session_factory
from vdi.models import DesktopRow

pytestmark = pytest.mark.e2e

CANVAS_HAS_PIXELS = """() => {
  const c = document.querySelector('#screen canvas');
  if (!c || !c.width || !c.height) return false;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  for (let i = 0; i < d.length; i += 4 * 97) { if (d[i] || d[i + 1] || d[i + 2]) return true; }
  return false;
}"""


def serial_log(domain: str) -> Path:
    return Path("/var/log/libvirt/qemu") / f"{domain}.serial.log"


def wait_for_text(path: Path, text: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return True
        time.sleep(0.2)
    return False


def sign_in(page: Page, url: str, username: str, password: str, lang: str = "zh_CN") -> float:
    page.goto(f"{url}/?lang={lang}")
    page.fill("#username", username)
    page.fill("#password", password)
    clicked = time.monotonic()
    page.click("#login-button")
    # until the page has gone on by itself (to the portal, or to the desktop of a clerk's
    # only pool): a page the test opens sooner has no session yet, or is cut off by it
    page.wait_for_url(lambda u: "?lang=" not in u, timeout=30_000)
    return clicked


def wait_for_input(broker: Broker, desktop_id: str, since: datetime,
                   timeout_s: float) -> datetime | None:
    """The desktop's last input time in the broker's database, once it is `since` or
    later (or whatever it is after timeout_s)."""
    engine = make_engine(f"sqlite:///{Path(broker.env['VDI_STATE_DIR']) / 'vdi.sqlite3'}")
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            with session_factory(engine)() as s:
                row = s.get(DesktopRow, desktop_id)
                seen = row.last_input_at if row is not None else None
            if (seen is not None and seen >= since) or time.monotonic() > deadline:
                return seen
            time.sleep(0.5)
    finally:
        engine.dispose()


SHIFTED = {">": "Period", "<": "Comma", "|": "Backslash", "_": "Minus", ":": "Semicolon",
           "&": "Digit7"}


def type_shell_line(page: Page, line: str) -> None:
    """Type a line and Enter. noVNC sends QEMU scancodes and Playwright's type() does not
    hold Shift for shifted characters, so press Shift explicitly for those."""
    for ch in line:
        key = SHIFTED.get(ch) or (f"Key{ch}" if ch.isascii() and ch.isupper() else None)
        if key is None:
            page.keyboard.type(ch, delay=15)
            continue
        page.keyboard.down("Shift")
        page.keyboard.press(key)
        page.keyboard.up("Shift")
    page.keyboard.press("Enter")


def test_clerk_signs_in_sees_desktop_and_typing_reaches_the_vm(broker: Broker,
                                                             browser: Browser) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    wait_ready_spare(broker)
    context = browser.new_context(locale="zh-CN", viewport={"width": 1024, "height": 700})
    page = context.new_page()
    clicked = sign_in(page, broker.url, "zhangsan", "demo2026")

    # One pool: the clerk lands on the desktop page; the canvas shows the desktop.
    page.wait_for_url("**/desktop/window", timeout=15_000)
    page.wait_for_function(CANVAS_HAS_PIXELS, timeout=30_000, polling=20)
    first_pixel_s = time.monotonic() - clicked
    assert page.locator("#who").inner_text().startswith("张三")
    desktop_id = page.locator("#screen").get_attribute("data-desktop")
    assert desktop_id and desktop_id.startswith("window-")
    domain = PREFIX + desktop_id
    rows = {row[0]: row for row in broker.desktops()}
    assert rows[desktop_id][1] == "assigned" and rows[desktop_id][2] == "zhangsan"

    # The guest has booted to its shell; type a command that writes to the serial port.
    assert wait_for_text(serial_log(domain), "VDI-READY", 90), "guest never reached its shell"
    marker = f"e2e-{secrets.token_hex(4)}"
    page.click("#screen canvas")
    # the tunnel reports input at most once per interval: the click's report must not
    # cover the keys
    time.sleep(INPUT_REPORT_INTERVAL_S + 0.2)
    typed_from = datetime.now(UTC)
    type_shell_line(page, f"echo {marker} > /dev/ttyS0")
    reached = wait_for_text(serial_log(domain), marker, 30)
    page.screenshot(path=str(ARTIFACTS / "e2e-desktop-zh.png"))
    assert reached, f"typed marker {marker} never reached the VM's serial port"

    # The tunnel saw the keys (idle detection builds on it): the broker wrote the time of
    # the last input to the desktop's row, within its flush interval (10 s by default).
    seen = wait_for_input(broker, desktop_id, typed_from, timeout_s=30)
    assert seen is not None and seen >= typed_from, (
        f"the broker recorded no input on {desktop_id} since {typed_from}: {seen}")

    # Signing in again from another tab lands in the same desktop.
    second = context.new_page()
    second.goto(broker.url + "/desktop/window")
    second.wait_for_function(CANVAS_HAS_PIXELS, timeout=30_000, polling=50)
    assert second.locator("#screen").get_attribute("data-desktop") == desktop_id
    (ARTIFACTS / "e2e-timings.json").write_text(json.dumps(
        {"login_click_to_first_pixel_s": round(first_pixel_s, 3)}))
    context.close()


def test_network_blip_reconnects_to_the_same_desktop(broker: Broker, browser: Browser) -> None:
    wait_ready_spare(broker)
    context = browser.new_context(locale="en-US")
    page = context.new_page()
    sign_in(page, broker.proxied_url, "lisi", "demo2026", lang="en")
    page.wait_for_url("**/desktop/window", timeout=15_000)
    page.wait_for_function(CANVAS_HAS_PIXELS, timeout=30_000, polling=50)
    desktop_id = page.locator("#screen").get_attribute("data-desktop")
    assert desktop_id
    page.evaluate("() => { window.vdiTimings.connected = null; }")
    # The network between browser and broker drops, and comes back a few seconds later.
    broker.proxy.cut()
    page.wait_for_function(
        "() => document.getElementById('status').textContent.includes('Reconnecting')",
        timeout=30_000)
    time.sleep(2)
    broker.proxy.restore()
    page.wait_for_function("() => window.vdiTimings.connected", timeout=30_000)
    assert page.locator("#screen").get_attribute("data-desktop") == desktop_id
    rows = {row[0]: row for row in broker.desktops()}
    assert rows[desktop_id][2] == "lisi"
    context.close()
