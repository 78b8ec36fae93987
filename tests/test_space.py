"""The Space (``examples/space/app.py``) in a real browser: the app runs on a free localhost port with tiny models saved
in a temporary folder, headless Chromium (the OS package, /usr/bin/chromium) is driven by Playwright (its driver only),
a bundled image is uploaded and the class probabilities, the mask area and the overlay are read back from the page
and checked against the models called directly. Errors must show in the page. Nothing may be fetched from outside.

Without Chromium, Playwright or Gradio the tests are skipped with the reason shown; with ``CI=true`` they fail."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from hf_medmamba import (
    MedMambaConfig,
    MedMambaForImageClassification,
    MedMambaImageProcessor,
    VMUNetConfig,
    VMUNetForSegmentation,
    VMUNetImageProcessor,
)

from .conftest import REPO, data_path


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TINY = {"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128]}
IMAGE = ("busi_seg", "test", "images", "malignant_0003.png")


def require_browser():
    """Playwright's sync API, or a skip (a failure with CI=true) naming what is missing and how to get it."""
    missing = []
    try:
        import gradio  # noqa: F401
    except ImportError:
        missing.append("gradio (pip install -e '.[space]')")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("playwright (pip install playwright; its driver only, never `playwright install`)")
    if not CHROMIUM.is_file():
        missing.append(f"Chromium at {CHROMIUM} (apt-get update && apt-get install -y chromium)")
    if missing:
        reason = "the Space's browser test needs " + " and ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: the browser test must run)")
        pytest.skip(reason)
    return sync_playwright


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny MedMamba classifier and a tiny binary VM-UNet, saved with their processors."""
    root = tmp_path_factory.mktemp("space_models")
    torch.manual_seed(0)
    labels = {0: "benign", 1: "malignant", 2: "normal"}
    MedMambaForImageClassification(MedMambaConfig(**TINY, id2label=labels)).save_pretrained(root / "cls")
    MedMambaImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "cls")
    binary = VMUNetConfig(
        **TINY, depths_decoder=[1, 1, 1, 1], id2label={0: "background", 1: "lesion"}, sigmoid_head=True
    )
    VMUNetForSegmentation(binary).save_pretrained(root / "seg")
    VMUNetImageProcessor(size={"height": 64, "width": 64}, normalization_mode="standard").save_pretrained(root / "seg")
    return root / "cls", root / "seg"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(models, tmp_path_factory):
    """The app started as a Space starts it (``python app.py``) on a free localhost port; stopped afterwards."""
    require_browser()
    port = free_port()
    log = tmp_path_factory.mktemp("space_log") / "app.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    command = [sys.executable, str(REPO / "examples" / "space" / "app.py"), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--classifier", str(models[0]), "--segmenter", str(models[1])]
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None:
                pytest.fail(f"the app exited with status {process.returncode}:\n{log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the app did not open port {port} within 240 s:\n{log.read_text()}")
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser():
    sync_playwright = require_browser()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, url):
    """A fresh page on the app, with every URL the page requests recorded."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.requests = []
    page.on("request", lambda request: page.requests.append(request.url))
    page.goto(url)
    page.wait_for_selector("#upload input[type=file]", state="attached", timeout=60_000)
    return page


def wait_for_notes(page, *words):
    """The result text once it holds one of ``words`` (Gradio shows progress text there while it runs)."""
    condition = " || ".join(f"text.includes({word!r})" for word in words)
    page.wait_for_function(
        f"() => {{ const text = (document.querySelector('#notes') || {{innerText: ''}}).innerText; "
        f"return !text.includes('processing') && ({condition}); }}",
        timeout=120_000,
    )
    return page.locator("#notes").inner_text()


def expected_results(models, image):
    """The classifier's probabilities and the segmenter's lesion pixel count, from the models called directly."""
    from transformers import AutoModelForImageClassification, AutoModelForSemanticSegmentation
    from transformers.models.auto.image_processing_auto import AutoImageProcessor

    from hf_medmamba.tools import medical_io

    classifier = AutoModelForImageClassification.from_pretrained(models[0]).eval()
    with torch.no_grad():
        logits = classifier(**AutoImageProcessor.from_pretrained(models[0])(image, return_tensors="pt")).logits
    probabilities = dict(zip(["benign", "malignant", "normal"], logits.softmax(-1)[0].tolist()))
    segmenter = AutoModelForSemanticSegmentation.from_pretrained(models[1]).eval()
    labels = medical_io.label_maps(segmenter, AutoImageProcessor.from_pretrained(models[1]), [image])[0]
    return probabilities, int((labels == 1).sum())


def test_upload_shows_probabilities_mask_and_area(browser, app_url, models, tmp_path):
    page = open_page(browser, app_url)
    page.locator("#upload input[type=file]").set_input_files(str(data_path(*IMAGE)))
    notes = wait_for_notes(page, "mask area", "Error")
    assert "Error" not in notes and "Traceback" not in page.content()

    with PIL.Image.open(data_path(*IMAGE)) as image:
        probabilities, lesion_pixels = expected_results(models, image.copy())
        size = image.width * image.height
    best = max(probabilities, key=probabilities.get)
    assert f"Classifier: {best} ({100 * probabilities[best]:.1f} %)" in notes
    label = page.locator("#probabilities").inner_text()
    assert all(name in label for name in probabilities)
    assert f"{round(100 * probabilities[best])}%" in label
    row = next(line for line in notes.splitlines() if line.startswith("lesion"))
    assert row.split("\t")[:3] == ["lesion", str(lesion_pixels), f"{100 * lesion_pixels / size:.1f} %"]

    overlay = page.locator("#overlay img")
    overlay.wait_for(timeout=30_000)
    assert overlay.evaluate("img => img.naturalWidth") == 256  # the overlay has the uploaded image's size

    shot = tmp_path / "screenshots" / "space.png"
    shot.parent.mkdir()
    page.screenshot(path=str(shot), full_page=True)
    with PIL.Image.open(shot) as picture:
        assert picture.width == 1200 and np.asarray(picture.convert("L")).std() > 10  # a rendered page, not blank
    outside = [url for url in page.requests if not url.startswith((app_url, "data:", "blob:"))]
    assert not outside, f"the page fetched from outside: {outside}"
    page.close()


def test_errors_are_shown_in_the_page(browser, app_url, tmp_path):
    page = open_page(browser, app_url)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not a DICOM file at all")
    page.locator("#upload input[type=file]").set_input_files(str(broken))
    notes = wait_for_notes(page, "Error")
    assert "broken.dcm is not a readable DICOM file" in notes

    page.locator("#upload button[aria-label='Clear']").click()
    page.locator("#upload input[type=file]").set_input_files(str(data_path(*IMAGE)))
    wait_for_notes(page, "mask area")
    box = page.get_by_label("Classifier (MedMamba folder or Hub id)")
    box.fill(str(tmp_path / "missing-model"))
    page.get_by_role("button", name="Analyse").click()
    notes = wait_for_notes(page, "Error")
    assert "missing-model does not exist" in notes
    assert "Traceback" not in page.content()
    page.close()
