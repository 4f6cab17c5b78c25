"""The web console in a real headless Chromium (Debian's, driven by Selenium): submit, live
progress per item, images with receipts that match their listing, same again, cancel, the
jobs list with filter and pages, the models, the key prompt, a phone-width screen.
Screenshots go to test-output/console/."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from dreamforge.config import Settings
from dreamforge.domain.access import Scope
from dreamforge.runners.fake import FakeRunner
from tests.conftest import ApiThread, free_port, register_tiny, unavailable
from tests.helpers import submit, wait_for
from tests.test_lifecycle import FakeServer, serving_fake

SHOTS = Path(__file__).resolve().parents[1] / "test-output" / "console"
T = TypeVar("T")


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[FakeServer]:
    """The embedded profile on the fake runner, 10 ms a step: slow enough to watch."""
    with serving_fake(
        tmp_path_factory.mktemp("console"), tiny_model_dir, FakeRunner(step_s=0.01)
    ) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        unavailable("Chromium and its driver (Debian: chromium, chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    profile = tempfile.mkdtemp(prefix="chromium-")
    # Background networking off: this machine's closed network refuses it, noisily.
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    chrome = webdriver.Chrome(options=options, service=Service(str(driver)))
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield chrome
    chrome.quit()
    shutil.rmtree(profile, ignore_errors=True)


def until(check: Callable[[], T], timeout: float = 30, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except WebDriverException:
            found = None  # type: ignore[assignment]
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.05)


def js(browser: WebDriver, script: str) -> Any:
    return browser.execute_script(script)


def job_id_shown(browser: WebDriver, other_than: str = "") -> str:
    return until(
        lambda: (
            (text := browser.find_element(By.ID, "job-id").text) and text != other_than and text
        ),
        what="a job page",
    )


def test_submit_watch_each_item_and_check_its_receipt(fake: FakeServer, browser: WebDriver) -> None:
    url = str(fake.client.base_url).rstrip("/")
    browser.get(f"{url}/")
    until(
        lambda: browser.find_elements(By.CSS_SELECTOR, "select[name=model_id] option"),
        what="models",
    )
    form = browser.find_element(By.ID, "job-form")
    for name, value in {"prompt": "a console fox", "width": "64", "height": "64", "steps": "100",
                        "seed": "5", "count": "2"}.items():  # fmt: skip
        field = form.find_element(By.NAME, name)
        field.clear()
        field.send_keys(value)
    Select(form.find_element(By.NAME, "scheduler")).select_by_visible_text("Euler a")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    job_id = job_id_shown(browser)

    # Live: an item's bar part-way through its steps, while the job runs.
    until(
        lambda: js(browser, "return [...document.querySelectorAll('#items progress')]"
                            ".some(p => p.value > 0 && p.value < 1)"),
        what="an item part-way",
    )  # fmt: skip
    browser.save_screenshot(str(SHOTS / "progress.png"))
    until(lambda: browser.find_element(By.ID, "job-status").text == "succeeded", what="succeeded")
    until(
        lambda: len(browser.find_elements(By.CSS_SELECTOR, "#items .verified")) == 2,
        what="receipts",
    )
    assert js(
        browser,
        "return [...document.querySelectorAll('#items img')].every(i => i.naturalWidth === 64)",
    )
    browser.save_screenshot(str(SHOTS / "gallery.png"))

    listed = fake.client.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]
    shown = js(browser, "return [...document.querySelectorAll('#items .item')]"
                        ".map(i => [i.dataset.seed, i.dataset.sha256])")  # fmt: skip
    assert shown == [[str(a["seed"]), a["sha256"]] for a in listed]
    model_sha = fake.client.get("/v1/models/tiny-sdxl").json()["sha256"]
    assert model_sha[:16] in browser.find_element(By.ID, "items").text
    job = fake.client.get(f"/v1/jobs/{job_id}").json()
    assert job["spec"]["scheduler"] == "euler_a" and job["spec"]["item_seeds"] == [5, 6]

    browser.find_element(By.ID, "job-again").click()
    again = job_id_shown(browser, other_than=job_id)
    twin = wait_for(fake.client, again, {"succeeded"})
    assert {k: v for k, v in twin["spec"].items()} == job["spec"]


def test_cancel_a_running_job(fake: FakeServer, browser: WebDriver) -> None:
    url = str(fake.client.base_url).rstrip("/")
    job = submit(fake.client, prompt="cancel me", steps=150, count=3)
    browser.get(f"{url}/#/jobs/{job['id']}")
    until(lambda: browser.find_element(By.ID, "job-status").text == "running", what="running")
    browser.find_element(By.ID, "job-cancel").click()
    until(lambda: browser.find_element(By.ID, "job-status").text == "canceled", what="canceled")
    assert not browser.find_element(By.ID, "job-cancel").is_enabled()


def test_the_jobs_list_filters_by_status_and_pages(fake: FakeServer, browser: WebDriver) -> None:
    url = str(fake.client.base_url).rstrip("/")
    for i in range(6):
        wait_for(fake.client, submit(fake.client, prompt=f"page {i}", steps=1)["id"], {"succeeded"})
    browser.get(f"{url}/#/jobs")
    filters = browser.find_element(By.ID, "jobs-filter")
    Select(filters.find_element(By.NAME, "limit")).select_by_visible_text("5")
    Select(filters.find_element(By.NAME, "status")).select_by_visible_text("succeeded")

    def rows() -> list[str]:
        return js(
            browser, "return [...document.querySelectorAll('#jobs-rows tr')].map(r => r.dataset.id)"
        )  # type: ignore[no-any-return]

    def statuses() -> set[str]:
        cells = browser.find_elements(By.CSS_SELECTOR, "#jobs-rows td.status")
        return {c.text for c in cells}

    until(lambda: len(rows()) == 5 and statuses() == {"succeeded"}, what="a page of 5")
    first = rows()
    browser.find_element(By.ID, "jobs-older").click()
    until(lambda: rows() and rows() != first, what="the next page")
    assert not set(rows()) & set(first)
    browser.find_element(By.ID, "jobs-newer").click()
    until(lambda: rows() == first, what="the first page again")
    Select(filters.find_element(By.NAME, "status")).select_by_visible_text("canceled")
    until(lambda: statuses() == {"canceled"}, what="canceled jobs only")
    browser.find_element(By.CSS_SELECTOR, "#jobs-rows tr").click()
    until(lambda: browser.find_element(By.ID, "job-status").text == "canceled", what="a job page")


def test_with_keys_on_it_asks_for_one_and_fits_a_phone(
    tmp_path: Path, tiny_model_dir: Path, browser: WebDriver
) -> None:
    settings = Settings(data_dir=tmp_path, port=free_port())  # type: ignore[call-arg]
    register_tiny(settings.resolved_database_url, tiny_model_dir)
    with ApiThread(settings, run_worker=True, runner=FakeRunner(step_s=0.001)) as api:
        key = api.runtime.access.create("acme", frozenset(Scope)).key
        browser.set_window_size(390, 844)
        try:
            browser.get(f"{api.url}/")
            until(lambda: browser.find_element(By.ID, "key").is_displayed(), what="the key prompt")
            browser.save_screenshot(str(SHOTS / "key.png"))
            browser.find_element(By.ID, "key-input").send_keys(key)
            browser.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
            until(
                lambda: browser.find_elements(By.CSS_SELECTOR, "select[name=model_id] option"),
                what="models",
            )
            assert js(browser, "return document.documentElement.scrollWidth <= window.innerWidth")
            browser.save_screenshot(str(SHOTS / "phone.png"))

            browser.get(f"{api.url}/#/models")
            until(
                lambda: "tiny-sdxl" in browser.find_element(By.ID, "models-rows").text,
                what="models",
            )
            assert browser.find_element(By.ID, "downloads-panel").is_displayed()
            assert js(browser, "return document.documentElement.scrollWidth <= window.innerWidth")
        finally:
            browser.set_window_size(1280, 1000)


def test_a_model_pulled_from_the_console_shows_its_progress_then_its_entry(
    tmp_path: Path,
    tiny_model_dir: Path,
    browser: WebDriver,
    sdxl_checkpoint: Callable[..., bytes],
) -> None:
    from tests.hubs import CivitaiVersion, FakeCivitai, LocalHttpServer

    civitai = FakeCivitai()
    port: list[int] = []
    hub = LocalHttpServer(civitai.app(port))
    port.append(hub.port)
    civitai.add(CivitaiVersion(31, 2, "Console XL.safetensors", sdxl_checkpoint(), seconds=3.0))
    settings = Settings(data_dir=tmp_path / "data", port=free_port(), civitai_endpoint=hub.url)  # type: ignore[call-arg]
    register_tiny(settings.resolved_database_url, tiny_model_dir)
    with hub, ApiThread(settings, run_worker=True, runner=FakeRunner()) as api:
        browser.get(f"{api.url}/#/models")
        until(lambda: "tiny-sdxl" in browser.find_element(By.ID, "models-rows").text, what="models")
        browser.find_element(By.CSS_SELECTOR, "#pull-form input[name=source]").send_keys(
            "civitai:31"
        )
        browser.find_element(By.CSS_SELECTOR, "#pull-form button[type=submit]").click()
        until(
            lambda: js(browser, "return [...document.querySelectorAll('#downloads progress')]"
                                ".some(p => p.value > 0 && p.value < p.max)"),
            what="a download part-way",
        )  # fmt: skip
        browser.save_screenshot(str(SHOTS / "download.png"))
        until(
            lambda: "console-xl" in browser.find_element(By.ID, "models-rows").text,
            timeout=60,
            what="the new model",
        )
        assert "succeeded" in browser.find_element(By.ID, "downloads").text
