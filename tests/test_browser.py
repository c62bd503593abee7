"""The web page in a real browser: Playwright driving Debian's Chromium (headless).

CI installs Chromium (`.ci/run`) and sets FMNIST_REQUIRE_BROWSER=1, so there a missing
browser fails instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

CHROMIUM = os.environ.get("FMNIST_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        if os.environ.get("FMNIST_REQUIRE_BROWSER"):
            pytest.fail(f"Chromium not found at {CHROMIUM}; install Debian's chromium package")
        pytest.skip(f"Chromium not found at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server_url(trained_run):
    """The app for the trained run, served by uvicorn on a free loopback port in a thread."""
    from fmnist.predict import Predictor

    yield from _served(Predictor.load(trained_run))


@pytest.fixture(scope="module")
def bundled_url():
    """The app for the model bundled with fmnist, which tells garments from the rest."""
    from fmnist.predict import Predictor

    yield from _served(Predictor.load())


def _served(predictor):
    import uvicorn

    from fmnist.serve import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(predictor), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start within 30 s"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


def test_upload_shows_the_processed_input_and_the_label(browser, server_url, trained_run,
                                                        test_images, tmp_path):
    from fmnist.predict import Predictor

    x, _ = test_images
    photo = tmp_path / "trousers.png"
    Image.fromarray(255 - np.kron(x[2], np.ones((8, 8), np.uint8))).save(photo)  # dark on white
    prediction = Predictor.load(trained_run).predict(photo)[0]
    expected = prediction.top_k[0].label
    if prediction.in_distribution is False:  # the tiny test model may doubt it
        expected = f"Closest class: {expected}"

    page = browser.new_page()
    page.goto(server_url)
    page.wait_for_function("document.getElementById('model').textContent.startsWith('Model mlp')")
    page.set_input_files("#file", str(photo))
    page.wait_for_function("document.getElementById('top-label').textContent.length > 0", timeout=20_000)
    assert page.inner_text("#top-label") == expected
    assert page.locator("#results .bar").count() == 3
    # The processed 28x28 input is drawn: its canvas is no longer all black.
    lit = page.evaluate("""() => {
        const data = document.getElementById('processed').getContext('2d').getImageData(0, 0, 28, 28).data;
        let lit = 0; for (let i = 0; i < data.length; i += 4) if (data[i] > 100) lit++; return lit; }""")
    assert lit > 50
    assert page.inner_text("#error") == ""
    page.close()


def test_a_drawing_gets_a_prediction(browser, server_url):
    page = browser.new_page()
    page.goto(server_url)
    box = page.locator("#draw").bounding_box()
    # Draw trousers: two long legs joined at the waist.
    page.mouse.move(box["x"] + 90, box["y"] + 40)
    page.mouse.down()
    for x, y in ((190, 40), (200, 250), (160, 250), (140, 90), (120, 250), (80, 250), (90, 40)):
        page.mouse.move(box["x"] + x, box["y"] + y, steps=8)
    page.mouse.up()
    page.click("#predict-drawing")
    page.wait_for_function("document.getElementById('top-label').textContent.length > 0", timeout=20_000)
    labels = page.locator("#results .bar .label").all_inner_texts()
    # "Trousers", or "Closest class: Trousers" where the tiny test model doubts a drawing.
    assert len(labels) == 3 and page.inner_text("#top-label").endswith(labels[0])
    assert page.inner_text("#error") == ""
    page.close()


def test_a_non_image_shows_the_servers_error(browser, server_url, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("not really a picture")
    page = browser.new_page()
    page.goto(server_url)
    page.set_input_files("#file", str(notes))
    page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=20_000)
    assert "not an image" in page.inner_text("#error")
    page.close()


def _open(browser, url, image):
    page = browser.new_page()
    page.goto(url)
    page.set_input_files("#file", str(image))
    page.wait_for_function("document.getElementById('top-label').textContent.length > 0", timeout=20_000)
    return page


def test_an_image_unlike_any_garment_is_called_so(browser, bundled_url, tmp_path):
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8)).save(noise)
    page = _open(browser, bundled_url, noise)
    assert page.is_visible("#ood")
    assert "does not look like any garment" in page.inner_text("#ood")
    assert page.inner_text("#top-label").startswith("Closest class: ")
    page.close()


def test_a_garment_is_named_and_the_saliency_toggle_draws_over_it(browser, bundled_url,
                                                                   test_images, tmp_path):
    x, _ = test_images
    boot = tmp_path / "boot.png"
    Image.fromarray(255 - np.kron(x[0], np.ones((8, 8), np.uint8))).save(boot)  # an ankle boot
    page = _open(browser, bundled_url, boot)
    assert not page.is_visible("#ood")
    assert page.inner_text("#top-label") == "Ankle boot"
    reddish = """() => {
        const data = document.getElementById('processed').getContext('2d').getImageData(0, 0, 28, 28).data;
        let red = 0; for (let i = 0; i < data.length; i += 4) if (data[i] > data[i + 1] + 40) red++; return red; }"""
    assert page.evaluate(reddish) == 0  # gray until asked
    page.check("#show-saliency")
    assert page.evaluate(reddish) > 10
    page.close()
