"""The dashboard in a real headless browser (Debian's chromium, driven through chromium-driver by selenium):
three `dsm node run` processes with an API token; the page asks for the token, is given it through its form
(never in the URL), lists every member with its state, draws the ring, and shows a member's death (state and
alert) when that process is killed. A screenshot of the page is left in the test's directory.

Needs `chromium` and `chromium-driver` (apt) and selenium (the dev extra); skipped without them, a failure
under DSM_TEST_STRICT=1 (`.ci/run` installs them)."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from procs import Proc, eventually, procs_fixture  # noqa: F401 (the `procs` fixture)
from support import skip_or_fail

pytestmark = pytest.mark.usefixtures("loopback_hosts")

TOKEN = "browser-token-0123456789"
ENV = {"DSM_HTTP_TOKEN": TOKEN}


@pytest.fixture
def browser() -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        skip_or_fail("selenium is not installed (pip install -e '.[dev]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        skip_or_fail("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def rows(driver: Any) -> dict[str, str]:
    """The members the rendered page lists, with their state (read in one script: the page redraws the table
    every second, so elements found one call earlier may be gone)."""
    script = (
        "return Array.from(document.querySelectorAll('#members tbody tr'), r => [r.dataset.member, r.dataset.state])"
    )
    return dict(driver.execute_script(script))


def test_the_dashboard_shows_the_members_and_a_death(browser: Any, procs: list[Proc], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    first = Proc("w0", "127.0.0.1", tmp_path, [], env=ENV)
    procs.append(first)
    for i in (1, 2):
        procs.append(Proc(f"w{i}", f"127.0.0.{i + 1}", tmp_path, [first.listen], env=ENV))

    browser.get(first.url + "/ui")
    eventually(lambda: "API token" in browser.find_element(By.ID, "alerts").text)  # asks for it: 401 without
    assert rows(browser) == {}
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
    assert TOKEN not in browser.current_url
    assert browser.execute_script("return sessionStorage.getItem('dsm-token')") == TOKEN

    eventually(lambda: rows(browser) == {"w0": "alive", "w1": "alive", "w2": "alive"}, timeout=30)
    eventually(lambda: browser.find_element(By.ID, "node-id").text == "w0")
    eventually(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#ring circle.node")) == 3, timeout=30)
    eventually(lambda: browser.find_element(By.ID, "ready").text == "ready")
    assert browser.find_elements(By.CSS_SELECTOR, "#ring line.near")  # the overlay's links are drawn
    browser.save_screenshot(str(tmp_path / "dashboard.png"))

    victim = procs.pop()
    assert victim.stop(signal.SIGKILL) == -signal.SIGKILL
    eventually(lambda: rows(browser).get("w2") in ("suspect", "dead"), timeout=30)
    eventually(lambda: "w2" in browser.find_element(By.ID, "alerts").text, timeout=30)
    assert rows(browser)["w0"] == rows(browser)["w1"] == "alive"
    browser.save_screenshot(str(tmp_path / "dashboard-death.png"))
