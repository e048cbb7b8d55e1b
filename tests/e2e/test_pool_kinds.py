"""Floating vs dedicated across log-off and re-login, on real libvirtd guests through the
browser: the clerk writes a file on the desktop's disk, logs off with the page's button,
comes back. A floating desktop comes back as a fresh clone of the image (the file is
gone); a dedicated one is the same desktop with the file still there.

Each pool holds one desktop (max_size 1), so coming back can only mean that desktop."""

from __future__ import annotations

import secrets
import time

import pytest
from playwright.sync_api import Browser, Page

from tests.e2e.conftest import PREFIX, Broker
from tests.e2e.test_clerk_desktop import (
    CANVAS_HAS_PIXELS,
    serial_log,
    sign_in,
    type_shell_line,
    wait_for_text,
)

pytestmark = pytest.mark.e2e

# zhaoliu (it-ops) is in no other e2e test: these pools show up for nobody else
GROUP = "cn=it-ops,ou=groups,dc=district,dc=example"
USER = "zhaoliu"
NOTE = "/desk/home/clerk/note.txt"


def make_pool(broker: Broker, pool_id: str, kind: str) -> None:
    broker.vdi("pool-set", pool_id, "--name", f"{kind} test", "--image", "demo", "--kind", kind,
               "--min-ready", "1", "--max-size", "1", "--group", GROUP)


def row(broker: Broker, desktop_id: str) -> list[str]:
    return {r[0]: r for r in broker.desktops()}[desktop_id]


def wait_state(broker: Broker, pool_id: str, state: str, timeout_s: float = 120) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = [r for r in broker.desktops() if r[0].startswith(pool_id + "-")]
        if len(rows) == 1 and rows[0][1] == state:
            return rows[0]
        time.sleep(0.5)
    raise AssertionError(f"pool {pool_id}: no single desktop in {state} within {timeout_s} s: "
                         f"{broker.desktops()}\n{broker.log.read_text()[-3000:]}")


def open_desktop(page: Page, broker: Broker, pool_id: str, prefix: str = PREFIX,
                 pixels_s: float = 60) -> str:
    """Go to the pool's desktop page, wait for pixels and the guest's shell; the id.
    `prefix`: of the broker's domain names."""
    page.goto(f"{broker.url}/desktop/{pool_id}")
    page.wait_for_function(CANVAS_HAS_PIXELS, timeout=pixels_s * 1000, polling=50)
    desktop_id = page.locator("#screen").get_attribute("data-desktop")
    assert desktop_id and desktop_id.startswith(pool_id + "-")
    assert wait_for_text(serial_log(prefix + desktop_id), "VDI-READY", 90), "no guest shell"
    page.click("#screen canvas")
    return desktop_id


def run_in_guest(page: Page, desktop_id: str, command: str, prefix: str = PREFIX) -> str:
    """Type `command` into the guest's shell with its output going to the serial port;
    return what it printed there. `prefix`: of the broker's domain names. The guest's
    /run/serial is its serial port (ttyS0 on x86_64, ttyAMA0 on aarch64)."""
    done = f"DONE-{secrets.token_hex(3)}"
    log = serial_log(prefix + desktop_id)
    start = len(log.read_text(errors="replace")) if log.exists() else 0
    type_shell_line(page, f"{command} > /run/serial 2>&1; echo {done} > /run/serial")
    assert wait_for_text(log, done, 30), f"the guest did not run {command!r}"
    text = log.read_text(errors="replace")
    return text[start:text.index(done, start)]


def log_off(page: Page) -> None:
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#logoff")
    page.wait_for_url(lambda url: "/desktop/" not in url, timeout=15_000)  # to the portal


def test_floating_desktop_is_a_fresh_clone_after_log_off(broker: Broker,
                                                        browser: Browser) -> None:
    make_pool(broker, "kf", "floating")
    wait_state(broker, "kf", "ready")
    context = browser.new_context(locale="zh-CN")
    page = context.new_page()
    sign_in(page, broker.url, USER, "demo2026")
    page.wait_for_load_state("networkidle")
    first = open_desktop(page, broker, "kf")
    marker = f"kept-{secrets.token_hex(3)}"
    run_in_guest(page, first, f"echo {marker} > {NOTE}; sync; cat {NOTE}")
    assert marker in (serial_log(PREFIX + first).read_text(errors="replace"))
    log_off(page)
    assert row(broker, first)[2] == "-"  # no longer the clerk's
    wait_state(broker, "kf", "ready")  # reverted: destroyed, cloned again, booted
    again = open_desktop(page, broker, "kf")
    assert again == first  # the pool's only desktop
    shown = run_in_guest(page, again, f"cat {NOTE}")
    assert marker not in shown and "No such file" in shown, (
        shown, serial_log(PREFIX + again).read_text(errors="replace")[-2000:])
    assert row(broker, again)[2] == USER
    context.close()


def test_dedicated_desktop_keeps_its_disk_across_log_off(broker: Broker,
                                                          browser: Browser) -> None:
    make_pool(broker, "kd", "dedicated")
    wait_state(broker, "kd", "ready")
    context = browser.new_context(locale="en-US")
    page = context.new_page()
    sign_in(page, broker.url, USER, "demo2026", lang="en")
    page.wait_for_load_state("networkidle")
    first = open_desktop(page, broker, "kd")
    marker = f"kept-{secrets.token_hex(3)}"
    run_in_guest(page, first, f"echo {marker} > {NOTE}; sync; cat {NOTE}")
    log_off(page)
    assert row(broker, first)[1:3] == ["assigned", USER]  # still the clerk's
    again = open_desktop(page, broker, "kd")
    assert again == first
    shown = run_in_guest(page, again, f"cat {NOTE}")
    assert marker in shown, shown
    context.close()
