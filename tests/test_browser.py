"""In a real browser (headless Chromium through chromedriver): ``dbtk serve``'s page draws what the API answers,
and an ``eval --report`` page shows its table and overlays. Screenshots go to $DBTK_TEST_ARTIFACTS
(default build/test-artifacts/).

Skipped, with the reason, where Chromium, its driver or selenium is missing — except under CI (``CI`` set),
where .ci/run installs them and a missing browser is a failure, not a silent skip.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.web_fixtures import Served, blob_checkpoint, labelled_split, page, serving

pytestmark = pytest.mark.browser

ARTIFACTS = Path(os.environ.get("DBTK_TEST_ARTIFACTS", REPO / "build" / "test-artifacts"))
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    # without these, Chromium's background requests fail against a closed network and slow every page
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1100,900",
)


def _missing() -> str | None:
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[test]')"
    for names in (("chromium", "chromium-browser", "google-chrome"), ("chromedriver",)):
        if not any(shutil.which(name) for name in names):
            return f"{names[0]} not found (Debian: apt-get install chromium chromium-driver; .ci/run installs them)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the browser tests must run in CI: {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))))
    profile = tempfile.mkdtemp(prefix="dbtk-chromium-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def screenshot(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / name))


def drawn(driver: Any) -> list[list[Any]]:
    """The polygons on the page: points in image pixels and their scores."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#overlay polygon')).map(p => "
        "[p.getAttribute('points').split(' ').map(xy => xy.split(',').map(Number)), Number(p.dataset.score)])"
    )


def test_page_draws_what_the_api_answers(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    checkpoint = blob_checkpoint(tmp_path / "tiny.safetensors")
    image = tmp_path / "page.jpg"
    image.write_bytes(page(7))
    with serving(checkpoint) as served:
        browser.get(served.url)
        wait_for(lambda: "tiny.safetensors" in browser.find_element(By.ID, "model").text, "the model line")
        assert browser.find_element(By.ID, "box").get_attribute("value") == "0.5"  # the model's box_thresh
        browser.find_element(By.ID, "file").send_keys(str(image))
        wait_for(lambda: "boxes" in browser.find_element(By.ID, "status").text, "the detections")

        answer = api(served, image.read_bytes())  # the model's box_thresh
        polygons = drawn(browser)
        assert polygons == [[d["points"], d["score"]] for d in answer["detections"]] and polygons
        assert browser.execute_script("return document.getElementById('overlay').getAttribute('viewBox')") == "0 0 320 200"
        svg, img = (browser.find_element(By.ID, name).rect for name in ("overlay", "image"))
        assert all(abs(svg[k] - img[k]) < 1 for k in ("x", "y", "width", "height"))  # drawn over the image

        polygon = browser.find_elements(By.CSS_SELECTOR, "#overlay polygon")[0]
        ActionChains(browser).move_to_element(polygon).perform()
        tip = browser.find_element(By.ID, "tip")
        wait_for(tip.is_displayed, "the score tooltip")
        assert tip.text == f"score {polygons[0][1]:.3f}"
        screenshot(browser, "serve-page.png")

        everything = api(served, image.read_bytes(), "?box_thresh=0")
        scores = sorted(d["score"] for d in everything["detections"])
        middle = round(scores[len(scores) // 2], 2)  # a threshold the slider can take, splitting the boxes
        for threshold in (0, middle):
            browser.execute_script(f"const s = document.getElementById('box'); s.value = {threshold}; s.dispatchEvent(new Event('input'));")
            expected = api(served, image.read_bytes(), f"?box_thresh={threshold}")["detections"]
            assert drawn(browser) == [[d["points"], d["score"]] for d in expected], threshold
        assert len(everything["detections"]) > len(answer["detections"]) > 0
        screenshot(browser, "serve-page-threshold-middle.png")

        browser.find_element(By.ID, "file").send_keys(str(REPO / "pyproject.toml"))  # not an image
        wait_for(lambda: "422" in browser.find_element(By.ID, "status").text, "the error line")
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE" and "/v1/detect" not in entry["message"]]
    assert not severe, severe  # no blocked or missing asset (the 422 above is the only failed request)


def api(served: Served, data: bytes, query: str = "") -> dict:
    status, _, body = served.request("POST", f"/v1/detect{query}", data, {"Content-Type": "image/jpeg"})
    assert status == 200
    return json.loads(body)


def test_eval_report_shows_its_table_and_overlays(browser: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from selenium.webdriver.common.by import By

    from dbtk.cli import main

    checkpoint = blob_checkpoint(tmp_path / "tiny.safetensors")
    split = labelled_split(tmp_path / "split", checkpoint)
    main(["eval", str(checkpoint), "--data", str(split), "--device", "cpu", "--report", str(tmp_path / "report")])
    capsys.readouterr()
    browser.set_window_size(1100, 2400)  # every overlay in view: lazy images load
    browser.get((tmp_path / "report" / "index.html").as_uri())
    rows = browser.find_elements(By.CSS_SELECTOR, "#images tbody tr")
    assert [row.find_element(By.TAG_NAME, "a").text for row in rows] == [f"page{i}.jpg" for i in range(4)]
    wait_for(lambda: browser.execute_script(
        "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"), "the overlays")
    assert browser.execute_script("return document.images.length") == 4
    assert len(browser.find_elements(By.CSS_SELECTOR, "#curve polyline")) == 3
    header = browser.find_elements(By.CSS_SELECTOR, "#images th")[3]  # H
    header.click()
    assert header.get_attribute("aria-sort") == "ascending"
    values = [float(row.find_elements(By.TAG_NAME, "td")[3].text) for row in browser.find_elements(By.CSS_SELECTOR, "#images tbody tr")]
    assert values == sorted(values)
    screenshot(browser, "eval-report.png")
    browser.set_window_size(1100, 900)
