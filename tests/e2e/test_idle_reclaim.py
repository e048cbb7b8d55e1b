"""Idle reclaim on real libvirtd guests, through the browser: a broker of its own whose
pools have policies in seconds (the same code as minutes in production; the policy
core's timing is tested on a hand-moved clock in tests/pools/test_reclaimer.py).

* a clerk goes idle, sees the warning with its countdown, ignores it: the floating
  desktop is taken back, reverted (a file written before is gone) and returned to the
  pool, and the page says why;
* a clerk closes the tab and comes back within the grace: the same desktop; gone past
  the grace, the portal says why it went;
* a dedicated desktop left alone is shut down, stays the clerk's, and starts again on
  connect with the file written before.
"""

from __future__ import annotations

import itertools
import json
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import Browser, Page

from tests.e2e import test_pool_kinds as pool_kinds
from tests.e2e.conftest import ARTIFACTS, STAFF_GROUP, Broker, run_broker
from tests.e2e.test_clerk_desktop import CANVAS_HAS_PIXELS, serial_log, sign_in
from tests.e2e.test_pool_kinds import NOTE, run_in_guest

pytestmark = pytest.mark.e2e

PREFIX = "vdit-idle-"
SHIFTS = ("office", "after_hours", "off_day")  # the same values whenever the test runs


def policy(**values: object) -> dict[str, object]:
    return {"shifts": {shift: values for shift in SHIFTS}}


POOLS = {
    # pool: (kind, user, policy)
    "ifl": ("floating", "sunqi", policy(disconnect_grace_s=600, idle_warn_after_s=10,
                                        idle_countdown_s=15, idle_action="log_off")),
    "igr": ("floating", "zhangsan", policy(disconnect_grace_s=25, idle_warn_after_s="off",
                                           logoff_action="log_off")),
    "ided": ("dedicated", "lisi", policy(disconnect_grace_s=8, idle_warn_after_s="off",
                                         logoff_action="shut_down")),
}


@pytest.fixture(scope="module")
def idle_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    state = tmp_path_factory.mktemp("idle-broker")

    def pools(b: Broker) -> None:
        for pool_id, (kind, _, values) in POOLS.items():
            b.vdi("pool-set", pool_id, "--name", f"idle {pool_id}", "--image", "demo",
                  "--kind", kind, "--min-ready", "1", "--max-size", "1", "--group", STAFF_GROUP)
            f = state / f"{pool_id}.json"
            f.write_text(json.dumps(values), encoding="utf-8")
            b.vdi("pool-policy", pool_id, str(f))

    # signals written every second, the policy applied every second, a guest that
    # ignores the power button forced off after 5 s
    fast = {"VDI_INPUT_FLUSH_S": "1", "VDI_CONSOLE_STALE_S": "5",
            "VDI_RECLAIM_INTERVAL_S": "1", "VDI_SHUTDOWN_GRACE_S": "5"}
    with run_broker(state, PREFIX, env=fast, setup=pools) as b:
        yield b


def desktop_row(b: Broker, pool_id: str) -> list[str]:
    [row] = [r for r in b.desktops() if r[0].startswith(pool_id + "-")]
    return row


def wait_for(what: str, check: Callable[[], bool], b: Broker, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout_s} s: {b.desktops()}\n"
                         f"{b.log.read_text()[-3000:]}")


def open_desktop(page: Page, b: Broker, pool_id: str) -> str:
    return pool_kinds.open_desktop(page, b, pool_id, PREFIX, pixels_s=150)


def boots(domain: str) -> tuple[int, int]:
    """(the serial log's inode, how often the guest printed VDI-READY in it): libvirt
    appends to the log of a domain started again; a desktop made anew starts a new log."""
    log = serial_log(domain)
    if not log.exists():
        return 0, 0
    return log.stat().st_ino, log.read_text(errors="replace").count("VDI-READY")


def wait_boot(domain: str, before: tuple[int, int], timeout_s: float = 90,
              meanwhile: Callable[[], None] | None = None) -> None:
    """Until the guest has booted again since `before` (a boots() reading); `meanwhile`
    is called between the looks."""
    deadline = time.monotonic() + timeout_s
    while True:
        inode, count = boots(domain)
        if count > (before[1] if inode == before[0] else 0):
            return
        assert time.monotonic() < deadline, f"{domain} did not boot again"
        if meanwhile is not None:
            meanwhile()
        time.sleep(0.3)


def mouse_over_desktop(page: Page) -> Callable[[], None]:
    """Each call moves the mouse over the desktop's canvas: input, as the idle policy
    counts it."""
    box = page.locator("#screen canvas").bounding_box()
    assert box is not None
    across = itertools.cycle((0.4, 0.6))

    def move() -> None:
        page.mouse.move(box["x"] + box["width"] * next(across), box["y"] + box["height"] / 2)

    return move


def signed_in(browser: Browser, b: Broker, user: str, lang: str = "zh_CN") -> Page:
    context = browser.new_context(locale="zh-CN" if lang == "zh_CN" else "en-US",
                                  viewport={"width": 1024, "height": 700})
    page = context.new_page()
    sign_in(page, b.url, user, "demo2026", lang=lang)
    page.wait_for_load_state("networkidle")
    return page


def domain_state(name: str) -> str:
    r = subprocess.run(["virsh", "-c", "qemu:///system", "domstate", name],
                       capture_output=True, text=True, timeout=30, check=False)
    return r.stdout.strip() or r.stderr.strip()


def reclaims(b: Broker, pool_id: str) -> list[list[str]]:
    return [line.split("\t") for line in b.vdi("reclaims", "--pool", pool_id).splitlines()
            if line]


def test_idle_clerk_is_warned_then_the_floating_desktop_is_reverted(
        idle_broker: Broker, browser: Browser) -> None:
    b = idle_broker
    _, user, _ = POOLS["ifl"]
    wait_for("a ready desktop in ifl", lambda: desktop_row(b, "ifl")[1] == "ready", b)
    page = signed_in(browser, b, user)
    mine = open_desktop(page, b, "ifl")
    marker = f"idle-{secrets.token_hex(3)}"
    run_in_guest(page, mine, f"echo {marker} > {NOTE}; sync; cat {NOTE}", PREFIX)
    # no more input: the warning comes, with its countdown
    page.wait_for_selector("#idle-warning:not([hidden])", timeout=60_000)
    assert "键盘" in (page.text_content("#idle-text") or "")
    countdown = page.text_content("#idle-countdown") or ""
    assert "0:" in countdown, countdown
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "e2e-idle-warning-zh.png"))
    # ignored: the desktop is taken back, the page says why and does not reconnect
    page.wait_for_selector("#notice:not([hidden])", timeout=60_000)
    notice = page.text_content("#notice") or ""
    assert "注销" in notice and "键盘" in notice, notice
    assert page.is_visible("#reconnect")
    assert page.is_hidden("#idle-warning")
    page.screenshot(path=str(ARTIFACTS / "e2e-idle-reclaimed-zh.png"))
    [record] = reclaims(b, "ifl")
    assert record[2:6] == [mine, user, "log_off", "idle"], record
    # reverted and back in the pool, the file gone
    wait_for("the desktop back in the pool", lambda: desktop_row(b, "ifl")[1:3] == [
        "ready", "-"], b)
    page.click("#reconnect")
    page.wait_for_function(CANVAS_HAS_PIXELS, timeout=90_000, polling=100)
    # the fresh clone was offered only once its guest was up: it has booted already
    assert boots(PREFIX + mine)[1] >= 1, "a desktop was offered before its guest was up"
    mouse_over_desktop(page)()
    page.click("#screen canvas")
    shown = run_in_guest(page, mine, f"cat {NOTE}", PREFIX)
    assert marker not in shown and "No such file" in shown, shown
    page.context.close()


def test_closed_tab_reconnects_within_the_grace_and_is_told_after_it(
        idle_broker: Broker, browser: Browser) -> None:
    b = idle_broker
    _, user, _ = POOLS["igr"]
    wait_for("a ready desktop in igr", lambda: desktop_row(b, "igr")[1] == "ready", b)
    page = signed_in(browser, b, user)
    context = page.context
    first = open_desktop(page, b, "igr")
    page.close()  # the tab is closed
    time.sleep(8)
    assert desktop_row(b, "igr")[1:3] == ["assigned", user]
    page = context.new_page()
    assert open_desktop(page, b, "igr") == first  # the same desktop
    assert reclaims(b, "igr") == []
    page.close()  # gone for good this time
    wait_for("the desktop taken back after the grace",
             lambda: desktop_row(b, "igr")[2] == "-", b, timeout_s=90)
    [record] = reclaims(b, "igr")
    assert record[4:6] == ["log_off", "disconnected"], record
    page = context.new_page()  # the clerk comes back to the portal: why it went
    page.goto(f"{b.url}/?lang=en")
    shown = ".pools .notice:not([hidden])"  # under this pool only: the others have none
    page.wait_for_selector(shown, timeout=15_000)
    assert page.locator(shown).count() == 1
    text = page.text_content(shown) or ""
    assert "logged off" in text and "disconnected" in text, text
    page.screenshot(path=str(ARTIFACTS / "e2e-idle-portal-notice-en.png"))
    context.close()


def test_dedicated_desktop_is_shut_down_and_keeps_its_file(idle_broker: Broker,
                                                           browser: Browser) -> None:
    b = idle_broker
    _, user, _ = POOLS["ided"]
    wait_for("a ready desktop in ided", lambda: desktop_row(b, "ided")[1] == "ready", b)
    page = signed_in(browser, b, user, lang="en")
    context = page.context
    mine = open_desktop(page, b, "ided")
    marker = f"kept-{secrets.token_hex(3)}"
    run_in_guest(page, mine, f"echo {marker} > {NOTE}; sync; cat {NOTE}", PREFIX)
    page.close()
    domain = PREFIX + mine
    wait_for("the dedicated desktop shut down",
             lambda: domain_state(domain) == "shut off", b, timeout_s=90)
    assert desktop_row(b, "ided")[1:3] == ["assigned", user]  # still the clerk's
    [record] = reclaims(b, "ided")
    assert record[4:6] == ["shut_down", "disconnected"], record
    # connecting starts it again, on its own disk
    before = boots(domain)
    page = context.new_page()
    page.goto(f"{b.url}/desktop/ided")
    page.wait_for_function(CANVAS_HAS_PIXELS, timeout=120_000, polling=100)
    assert page.locator("#screen").get_attribute("data-desktop") == mine
    wait_boot(domain, before)
    page.click("#screen canvas")
    shown = run_in_guest(page, mine, f"cat {NOTE}", PREFIX)
    assert marker in shown, shown
    context.close()
