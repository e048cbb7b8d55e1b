"""The system administrator's console, end to end on a running broker (`vdi serve`),
real slapd, real libvirtd guests and Chromium: the administrator opens the console from
their start page, creates a pool with its idle policy and spare schedule, imports the
image it runs from the import folder (watching the progress bar), and watches the pool's
first desktop become ready on the dashboard, which reads itself again every few seconds.
The pool is made with no spare, its image imported, then the pool changed to keep one.
Every section is shot at 1366x768 in zh-CN and English (test-artifacts/)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, ViewportSize

from tests.e2e.conftest import ARTIFACTS, PREFIX, REPO, STAFF_GROUP, Broker, run_broker
from tests.e2e.test_clerk_desktop import sign_in

pytestmark = pytest.mark.e2e

ADMIN_GROUP = "cn=vdi-admins,ou=groups,dc=district,dc=example"  # zhaoliu, through it-ops
VIEWPORT: ViewportSize = {"width": 1366, "height": 768}
TABS = ("overview", "pools", "images", "hosts", "desktops", "sessions")


@pytest.fixture(scope="module")
def admin_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker whose import folder holds the project's guest disks."""
    env = {"VDI_ROLE_SYSTEM_ADMIN_GROUPS": ADMIN_GROUP,
           "VDI_IMAGE_IMPORT_DIR": str(REPO / "var" / "guest")}
    with run_broker(tmp_path_factory.mktemp("admin-broker"), PREFIX, env=env) as b:
        yield b


def shoot(page: Page, name: str, lang: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(300)  # the chart and bars settle
    page.screenshot(path=str(ARTIFACTS / f"e2e-admin-{name}-{lang}.png"))


def tab(page: Page, name: str) -> None:
    page.click(f"[role=tab][data-tab={name}]")
    page.locator(f"#tab-{name}").wait_for(state="visible")


def create_pool(page: Page) -> None:
    tab(page, "pools")
    page.click("#pool-new")
    form = page.locator("#pool-form")
    form.locator("[name=id]").fill("district")
    form.locator("[name=name]").fill("街道办窗口桌面")
    form.locator("[name=image]").fill("district-desktop")
    form.locator("[name=memory_mib]").fill("256")
    # no spare until its image is there (a desktop made before fails: "not published")
    form.locator("[name=min_ready]").fill("0")
    form.locator("[name=max_size]").fill("2")
    form.locator("[name=groups]").fill(STAFF_GROUP)
    office = form.locator("tr[data-shift=office]")
    office.locator("[name=disconnect_grace_s]").fill("300")
    office.locator("[name=idle_warn_after_s]").fill("1500")
    office.locator("[name=idle_countdown_s]").fill("120")
    form.locator("[name=spare_mode]").select_option("static")
    page.click("#level-add")
    form.locator("#level-rows [name=at]").fill("08:45")
    form.locator("#level-rows [name=level]").fill("1")
    form.locator("[name=holidays]").fill("2027-02-11")
    form.scroll_into_view_if_needed()
    shoot(page, "pool-form", "zh_CN")
    form.locator("button[type=submit]").click()
    page.locator("#pool-rows tr", has_text="district").wait_for(timeout=10_000)
    assert form.is_hidden()


def import_image(page: Page) -> None:
    tab(page, "images")
    form = page.locator("#import-form")
    form.locator("[name=file]").select_option("bios.qcow2")
    form.locator("[name=image]").fill("district-desktop")
    form.locator("button[type=submit]").click()
    page.locator("#import-progress").wait_for(state="visible", timeout=10_000)
    page.locator("#import-progress p", has_text="已导入").wait_for(timeout=240_000)
    assert page.locator("#import-progress progress").evaluate("p => p.value") == 100
    card = page.locator(".image-card[data-image=district-desktop]")
    card.wait_for(timeout=10_000)
    assert "已发布" in card.inner_text()  # the first version is released at once
    shoot(page, "images", "zh_CN")


def test_the_admin_creates_a_pool_imports_its_image_and_sees_it_ready(
        admin_broker: Broker, browser: Browser) -> None:
    page = browser.new_context(locale="zh-CN", viewport=VIEWPORT).new_page()
    sign_in(page, admin_broker.url, "zhaoliu", "demo2026", "zh_CN")
    page.click("text=系统管理控制台")
    page.locator("#board-hosts .host-line").first.wait_for(timeout=30_000)
    assert page.url.startswith(f"{admin_broker.url}/admin")

    create_pool(page)
    import_image(page)
    # the image is there: the pool keeps one spare ready from now on
    tab(page, "pools")
    page.locator("#pool-rows tr", has_text="district").locator("button").click()
    page.locator("#pool-form [name=min_ready]").fill("1")
    page.locator("#pool-form button[type=submit]").click()
    page.locator("#pool-rows tr", has_text="1-2").wait_for(timeout=10_000)

    # the dashboard reads itself again: the pool's spare boots, then is ready
    tab(page, "overview")
    ready = page.locator(".pool-card[data-pool=district] li[data-bucket=ready] .n")
    page.wait_for_function(
        "() => document.querySelector("
        "'.pool-card[data-pool=district] li[data-bucket=ready] .n')?.textContent === '1'",
        timeout=300_000, polling=1000)
    assert ready.inner_text() == "1"
    assert page.locator("#board-hosts .host-line .state").first.inner_text() == "在线"
    assert page.locator("#usage-chart").is_visible()
    # the day's figures came (GET /api/admin/usage): nobody has used a desktop yet
    page.locator("#usage-status", has_text="当天没有使用中的桌面。").wait_for(timeout=10_000)
    shoot(page, "overview", "zh_CN")
    for name in ("hosts", "desktops", "sessions"):
        tab(page, name)
        page.wait_for_load_state("networkidle")
        shoot(page, name, "zh_CN")
    assert page.locator("#session-rows tr", has_text="zhaoliu").count() == 1
    tab(page, "desktops")
    row = page.locator("#desktop-rows tr", has_text="district-")
    assert "就绪" in row.inner_text()

    # the same console in English, every section
    page.goto(f"{admin_broker.url}/admin?lang=en")
    page.locator(".pool-card[data-pool=district]").wait_for(timeout=10_000)
    assert page.locator("#usage-title").inner_text() == "Desktops in use over the day"
    for name in TABS:
        tab(page, name)
        page.wait_for_load_state("networkidle")
        if name == "pools":
            page.locator("#pool-rows tr", has_text="district").locator("button").click()
            assert page.locator("#pool-form [name=disconnect_grace_s]").first.input_value() \
                == "300"
            assert page.locator("#level-rows [name=at]").input_value() == "08:45"
            page.locator("#pool-form").scroll_into_view_if_needed()
            shoot(page, "pool-form", "en")
            page.click("#pool-cancel")
        shoot(page, name, "en")

    # a desktop removed from the console, after the confirmation
    tab(page, "desktops")
    row = page.locator("#desktop-rows tr", has_text="district-").first
    desktop_id = row.locator("strong").inner_text()
    row.locator("button").click()
    page.locator("dialog#confirm").wait_for(state="visible")
    assert desktop_id in page.locator("dialog#confirm .question").inner_text()
    page.click("dialog#confirm button[value=yes]")
    page.locator("#notice", has_text=f"Desktop {desktop_id} is being removed.").wait_for()
    page.context.close()


def test_the_helpdesk_cannot_open_the_console(admin_broker: Broker, browser: Browser) -> None:
    page = browser.new_context(locale="zh-CN").new_page()
    sign_in(page, admin_broker.url, "wangwu", "demo2026", "zh_CN")
    page.locator("text=服务台控制台").wait_for()
    assert page.locator("text=系统管理控制台").count() == 0
    page.goto(f"{admin_broker.url}/admin")  # sent back to their start page
    page.wait_for_url(f"{admin_broker.url}/")
    page.context.close()
