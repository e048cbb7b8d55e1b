"""A district's golden images, end to end on the running broker, real libvirtd guests and
Chromium: whole disks imported with `vdi image-import` from raw and vmdk (BIOS) and
qcow2 (UEFI, x86_64 and aarch64) each become a pool whose desktop a clerk opens and
types into; a clerk who
connects while the desktop still boots is told it is being prepared and gets the
desktop once its guest agent answers, never a black screen.

The files imported are the project's own guest disks (deploy/guest/build-image.sh)
converted to the formats a district brings."""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page

from tests.e2e.conftest import PREFIX, REPO, Broker
from tests.e2e.test_clerk_desktop import CANVAS_HAS_PIXELS, serial_log, sign_in
from tests.e2e.test_pool_kinds import open_desktop, run_in_guest, wait_state

pytestmark = pytest.mark.e2e

GROUP = "cn=it-ops,ou=groups,dc=district,dc=example"  # zhaoliu only
USER = "zhaoliu"
GUEST = REPO / "var" / "guest"


def as_format(tmp: Path, source: str, fmt: str) -> Path:
    out = tmp / f"{Path(source).stem}.{fmt}"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", fmt, str(GUEST / source),
                    str(out)], check=True, capture_output=True, timeout=120)
    return out


def signed_in_page(browser: Browser, broker: Broker) -> Page:
    page = browser.new_context(locale="zh-CN").new_page()
    sign_in(page, broker.url, USER, "demo2026")
    page.wait_for_load_state("networkidle")
    return page


@pytest.mark.parametrize("image, source, fmt, firmware, arch", [
    ("gi-raw", "bios.qcow2", "raw", "bios", "x86_64"),
    ("gi-vmdk", "bios.qcow2", "vmdk", "bios", "x86_64"),
    ("gi-uefi", "uefi.qcow2", "qcow2", "uefi", "x86_64"),
    # an ARM64 (Kunpeng, Phytium) desktop on a host that runs aarch64 guests (TCG here):
    # AAVMF firmware, virtio-gpu screen, USB keyboard on xhci
    ("gi-arm", "aarch64.qcow2", "qcow2", "uefi", "aarch64"),
], ids=["bios-from-raw", "bios-from-vmdk", "uefi-from-qcow2", "aarch64-from-qcow2"])
def test_an_imported_image_becomes_a_pool_a_clerk_types_into(
        broker: Broker, browser: Browser, tmp_path: Path, image: str, source: str, fmt: str,
        firmware: str, arch: str) -> None:
    src = as_format(tmp_path, source, fmt) if fmt != "qcow2" else GUEST / source
    # the host says it runs both (x86_64 under TCG here; aarch64 always emulated here)
    assert "aarch64,x86_64" in broker.vdi("hosts")
    out = broker.vdi("image-import", image, str(src))  # the architecture is read off it
    assert f"image {image} v1: {firmware}, linux, {arch}" in out, out
    assert "(checked)" in out and f"image {image} v1 released" in out, out
    broker.vdi("pool-set", image, "--name", f"imported {fmt}", "--image", image,
               "--min-ready", "1", "--max-size", "1", "--group", GROUP)
    wait_state(broker, image, "ready", timeout_s=240)
    page = signed_in_page(browser, broker)
    desktop = open_desktop(page, broker, image, pixels_s=120)
    marker = f"typed-{secrets.token_hex(4)}"
    shown = run_in_guest(page, desktop, f"echo {marker} on $(hostname)")
    assert f"{marker} on " in shown, shown
    page.context.close()


def test_a_clerk_who_connects_while_it_boots_is_told_and_let_in_once_it_is_up(
        broker: Broker, browser: Browser) -> None:
    # the pool's first spare was only just started: the page waits for its boot
    broker.vdi("pool-set", "gi-cold", "--name", "cold start", "--image", "demo",
               "--min-ready", "1", "--max-size", "1", "--group", GROUP)
    page = signed_in_page(browser, broker)
    page.goto(f"{broker.url}/desktop/gi-cold")
    page.wait_for_function(
        "() => (document.getElementById('status') || {}).textContent?.includes('准备')",
        timeout=30_000, polling=100)
    # Until the first pixels, look at the guest's serial log, then at the canvas: the
    # guest prints VDI-READY as its agent starts (~10 s after power-on here); without
    # "ready means up" the firmware's screen would reach the clerk seconds before that.
    desktop, ready_before_pixels = None, False
    deadline = time.monotonic() + 240
    while True:
        assert time.monotonic() < deadline, "the desktop never showed"
        desktop = desktop or page.locator("#screen").get_attribute("data-desktop")
        log = serial_log(PREFIX + desktop) if desktop else None
        up = bool(log and log.exists() and "VDI-READY" in log.read_text(errors="replace"))
        if page.evaluate(CANVAS_HAS_PIXELS):
            ready_before_pixels = up
            break
        time.sleep(0.1)
    assert desktop and desktop.startswith("gi-cold-")
    assert ready_before_pixels, "the clerk saw the desktop before its guest was up"
    page.click("#screen canvas")
    marker = f"cold-{secrets.token_hex(4)}"
    assert marker in run_in_guest(page, desktop, f"echo {marker}")
    page.context.close()


def test_a_desktop_that_never_comes_up_is_replaced_and_never_given_out(
        broker: Broker, tmp_path: Path) -> None:
    # a whole disk with a partition table and nothing to boot: the firmware finds no
    # bootloader, so no agent ever answers
    blank = tmp_path / "blank.raw"
    with blank.open("wb") as f:
        f.truncate(8 << 20)
    subprocess.run(["sfdisk", "-q", str(blank)], input="label: dos\nstart=2048, type=83\n",
                   text=True, check=True, capture_output=True)
    broker.vdi("image-import", "gi-blank", str(blank))
    broker.vdi("pool-set", "gi-blank", "--name", "never boots", "--image", "gi-blank",
               "--min-ready", "1", "--max-size", "1", "--boot-timeout", "10",
               "--group", GROUP)
    first = wait_rows(broker, "gi-blank", lambda rows: bool(rows))[0]
    with httpx.Client(base_url=broker.url, headers={"Origin": broker.url}, timeout=30) as c:
        signed = c.post("/api/session", json={"username": USER, "password": "demo2026"})
        assert signed.status_code == 200, signed.text
        csrf = signed.json()["csrf"]
        # the clerk asks while it boots and after it failed: never given it
        reasons: set[str] = set()
        deadline = time.monotonic() + 180
        while True:
            r = c.post("/api/pools/gi-blank/connect", headers={"X-CSRF-Token": csrf})
            assert r.status_code == 503 and r.json()["error"] == "desktop_starting", r.text
            rows = {row[0]: row for row in broker.desktops() if row[0].startswith("gi-blank-")}
            reasons |= {row[7] for row in rows.values() if row[1] in ("error", "deleted")}
            if first[0] in rows and rows[first[0]][1] == "deleted" and len(rows) > 1:
                break  # replaced: the failed one removed, another being made
            assert time.monotonic() < deadline, f"not replaced: {broker.desktops()}"
            time.sleep(1)
    assert all(row[2] == "-" for row in rows.values())  # nobody ever had one
    assert any("did not answer" in reason for reason in reasons), reasons
    broker.vdi("pool-set", "gi-blank", "--min-ready", "0")


def wait_rows(broker: Broker, pool_id: str, check: Callable[[list[list[str]]], bool],
              timeout_s: float = 60) -> list[list[str]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = [r for r in broker.desktops() if r[0].startswith(pool_id + "-")]
        if check(rows):
            return rows
        time.sleep(0.5)
    raise AssertionError(f"pool {pool_id}: not within {timeout_s} s: {broker.desktops()}")
