"""The demo in a real browser: Debian's headless Chromium driven by Selenium against a live Gradio server.

The model was trained on the phantom, so the page must show the phantom warning banner as soon as
it opens and again in the upload's message. Uploads a phantom X-ray from the localisation set
(probabilities, heatmap and the radiologist's box must appear, and the call at the validation
operating point next to a finding's probability), saves a screenshot (printed;
copied to ``$CXR_ARTIFACTS`` when set), then uploads a text file and checks the page shows the
error message. Needs ``apt-get install -y chromium chromium-driver`` (skipped without them) and the
demo extra (gradio, selenium).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from app_files import MODEL, tiny_checkpoint

from cxr_core.labels import LABELS
from cxr_core.models.checkpoints import load_checkpoint, save_checkpoint

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1500,1100",
)
WAIT_S = 90  # upper bound for every wait (first inference includes loading the model)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
        reason="Debian's Chromium is not installed: apt-get install -y chromium chromium-driver",
    ),
]

log = logging.getLogger(__name__)


def _require(module: str) -> None:
    """The demo extra is a hard requirement here: fail (not skip) with the install command."""
    try:
        __import__(module)
    except ImportError as exc:
        pytest.fail(f"{module} is missing ({exc}); install the demo extra: pip install -e '.[demo,test]'")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(phantom_data, tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> Iterator[str]:
    """The demo on 127.0.0.1 (a free port) in this process, with a tiny checkpoint; closed afterwards."""
    _require("gradio")
    from cxr_core.app.demo import build_app, launch

    models = tmp_path_factory.mktemp("models")
    best = tiny_checkpoint(models / MODEL / "seed0" / "best.pt", phantom_data.image_size)
    state = load_checkpoint(best)
    state.update(data_source="synthetic", label_file="Data_Entry_2017_v2020.csv")  # as train@ on the phantom
    save_checkpoint(best, state)
    operating = tmp_path_factory.mktemp("operating")
    (operating / MODEL).mkdir()
    thresholds = {label: 1.0 for label in LABELS} | {"Atelectasis": 0.0}  # known calls for any image
    (operating / MODEL / "seed0.json").write_text(
        json.dumps(
            {"model": MODEL, "seed": 0, "method": "youden", "chosen_on": "val", "temperature": None,
             "thresholds": thresholds}
        )
    )  # fmt: skip
    app = build_app(
        models,
        phantom_data.splits,
        operating_dir=operating,
        raw_dir=phantom_data.raw,
        methods=["EigenCAM", "GradCAM", "GradCAMPlusPlus"],
    )
    port = _free_port()
    launch(app, host="127.0.0.1", port=port, block=False)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    _require("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _open(driver: object, url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, WAIT_S).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "#cxr-upload input[type=file]"))
    )


def _upload(driver: object, path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "#cxr-upload input[type=file]").send_keys(str(path))


def _wait_for(driver: object, condition, what: str) -> object:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.25).until(condition)
    except TimeoutException:
        shot = Path(os.environ.get("CXR_ARTIFACTS") or ".") / f"demo-timeout-{int(time.time())}.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(shot))
        pytest.fail(f"timed out after {WAIT_S} s waiting for {what}; page screenshot: {shot}")


def _save_screenshot(driver: object, path: Path) -> Path:
    driver.save_screenshot(str(path))
    print(f"demo screenshot: {path}")  # pytest -s / -rP shows where it is
    artifacts = os.environ.get("CXR_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(artifacts) / path.name)
    return path


def _image_src(driver: object, elem_id: str) -> str | None:
    from selenium.webdriver.common.by import By

    images = driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} img")
    src = images[0].get_attribute("src") if images else None
    return src or None


def test_demo_upload_shows_probabilities_heatmap_box_and_errors(
    server: str, browser: object, phantom_data, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    loc = pd.read_csv(phantom_data.splits / "loc.csv")
    image_name = str(loc["image"].iloc[0])
    xray = phantom_data.raw / "images" / image_name
    box_labels = sorted(set(loc.loc[loc["image"] == image_name, "label"]))

    _open(browser, server)
    banner = _wait_for(
        browser,
        lambda d: "Phantom model" in (t := d.find_element(By.ID, "cxr-notice").text) and t,
        "the phantom warning banner",
    )
    assert "not trained on real X-rays" in banner and "never use them for a patient" in banner
    assert browser.find_element(By.ID, "cxr-notice").is_displayed()
    _upload(browser, xray)
    _wait_for(browser, lambda d: _image_src(d, "cxr-heatmap"), "the heatmap overlay")
    _wait_for(browser, lambda d: _image_src(d, "cxr-input"), "the input image with the box")
    message = browser.find_element(By.ID, "cxr-message").text
    assert image_name in message and "radiologist box" in message and all(b in message for b in box_labels)
    assert "Phantom model" in message
    probs_text = _wait_for(
        browser,
        lambda d: (
            (t := d.find_element(By.ID, "cxr-probs").text) and sum(lab in t for lab in LABELS) >= 10 and t
        ),
        "the 14 probabilities",
    )
    assert "%" in probs_text  # gr.Label shows confidences as percentages
    calls = _wait_for(
        browser,
        lambda d: "call at the val operating point" in (t := d.find_element(By.ID, "cxr-calls").text) and t,
        "the calls at the validation operating point",
    )
    assert "validation split (youden)" in calls
    cells = [
        [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        for row in browser.find_elements(By.CSS_SELECTOR, "#cxr-calls tbody tr")
    ]
    assert len(cells) == len(LABELS) and cells[0][0] == "Atelectasis" and cells[0][2] == "positive"
    assert browser.find_elements(By.CSS_SELECTOR, "#cxr-calls tbody tr")[0].is_displayed()
    shot = _save_screenshot(browser, tmp_path / "demo-upload.png")
    assert shot.stat().st_size > 10_000

    _open(browser, server)  # a fresh page: upload a file that is not an image
    notes = tmp_path / "notes.txt"
    notes.write_text("Findings: small left effusion.\n")
    _upload(browser, notes)
    text = _wait_for(
        browser,
        lambda d: "not an image file" in (t := d.find_element(By.ID, "cxr-message").text) and t,
        "the 'not an image' message in the page",
    )
    assert "notes.txt" in text and "Traceback" not in browser.page_source
    assert _image_src(browser, "cxr-heatmap") is None
    _save_screenshot(browser, tmp_path / "demo-error.png")


def test_demo_example_image_runs_with_one_click(server: str, browser: object) -> None:
    """The localisation set's images are offered as examples: one click gives a heatmap and the box."""
    from selenium.webdriver.common.by import By

    _open(browser, server)
    examples = _wait_for(
        browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#cxr-examples button"), "the example images"
    )
    examples[0].click()
    _wait_for(browser, lambda d: _image_src(d, "cxr-heatmap"), "the heatmap of the clicked example")
    message = browser.find_element(By.ID, "cxr-message").text
    assert "radiologist box" in message and "Phantom model" in message
