"""The audit administrator's page, end to end on the running broker (real slapd, real
libvirtd guest, Chromium): a clerk works at their desktop a while, so metering has a real
console use; the audit administrator opens "audit trail and reports" from their start
page, sees the trail (the clerk's sign-in among it), checks the hash chain, exports the
trail as CSV, and reads the desktop use of the pool with its chart. Screenshots in zh-CN
and English (test-artifacts/)."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser

from tests.e2e.conftest import ARTIFACTS, Broker
from tests.e2e.test_clerk_desktop import sign_in
from tests.e2e.test_pool_kinds import open_desktop

pytestmark = pytest.mark.e2e

LABELS = {"zh_CN": ("审计与报表", "哈希链完好", "导出 CSV", "街道办窗口桌面"),
          "en": ("Audit trail and reports", "The chain is intact", "Export CSV",
                 "街道办窗口桌面")}


@pytest.mark.parametrize("lang", ["zh_CN", "en"])
def test_the_auditor_reads_checks_and_exports_the_trail_and_the_use(
        broker: Broker, browser: Browser, lang: str) -> None:
    link, intact, export, pool_name = LABELS[lang]
    locale = "zh-CN" if lang == "zh_CN" else "en-US"
    clerk = browser.new_context(locale=locale).new_page()
    sign_in(clerk, broker.url, "zhangsan", "demo2026", lang)
    open_desktop(clerk, broker, "window")
    clerk.wait_for_timeout(2000)  # a use of a couple of seconds
    clerk.context.close()  # the console closes: the use ends

    page = browser.new_context(locale=locale, viewport={"width": 1366, "height": 900},
                               accept_downloads=True).new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    sign_in(page, broker.url, "zhengshi", "demo2026", lang)
    page.click(f"text={link}")
    page.wait_for_url(f"{broker.url}/audit")
    trail = page.locator("#trail tbody tr", has_text="zhangsan")
    trail.first.wait_for(timeout=10_000)
    page.click("#verify")
    page.locator("#verdict.intact", has_text=intact).wait_for(timeout=15_000)

    page.fill("#trail-filter input[name=action]", "login")
    page.click("#trail-filter button[type=submit]")
    page.wait_for_function("() => [...document.querySelectorAll('#trail tbody tr')]"
                           ".every(r => r.cells[4].textContent === 'login')")
    with page.expect_download() as got:
        page.click(f"#trail-csv:has-text('{export}')")
    body = got.value.path().read_bytes().decode("utf-8")
    assert body.startswith("\ufeffid,at,actor,role,office,action")
    assert all(line.split(",")[5] == "login" for line in body.splitlines()[1:] if line)

    row = page.locator("#meter tbody tr", has_text=pool_name)
    page.select_option("#meter-filter select[name=by]", "pool")
    page.click("#meter-filter button[type=submit]")
    row.wait_for(timeout=10_000)
    sessions = int(row.locator("td").nth(1).inner_text())
    assert sessions >= 1, "the clerk's console use is counted"
    assert page.locator("#total-hours").inner_text() != "0.00", "its time is counted"
    # Chart.js drew the day's bar onto the canvas
    page.wait_for_function("""() => { const c = document.getElementById('meter-chart');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (let i = 3; i < d.length; i += 4) if (d[i]) return true; return false; }""")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"e2e-audit-console-{lang}.png"), full_page=True)
    assert not errors, errors  # no script error, no blocked style or script (CSP)
    page.context.close()
