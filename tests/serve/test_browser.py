"""The page as a person uses it: ``ditlab serve`` on a free loopback port, driven by headless Chromium
(Selenium with Debian's chromium + chromium-driver). Pick a class of a tiny model and generate, watch the
progress and the preview, cancel a long generation, see the error of a bad value beside its field; the
page adapts to text and video models. Screenshots go to the test's temporary folder (and to
``$DITLAB_SCREENSHOT_DIR`` when set: that is how docs/serve_page.png is made)."""
from __future__ import annotations

import os
import shutil
import threading
import time

import httpx
import pytest
from serve_fakes import ServeProcess, chromium, free_port, text_pipeline, tiny_pipeline, video_pipeline

from ditlab.serve import Limits, ServedModels, create_app

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def server(served_dirs, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    proc = ServeProcess(served_dirs, "--max-steps", "1000", "--preview-every", "2", log=log)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = chromium(tmp_path_factory.mktemp("chromium"))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for(browser, script: str, timeout: float = 30.0):
    """Poll a JavaScript expression until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = browser.execute_script(f"return ({script});")
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for: {script}"
        time.sleep(0.05)


def open_page(browser, url: str) -> None:
    browser.get(url)
    wait_for(browser, "document.body.dataset.ready === 'true'")


def set_value(browser, element_id: str, value) -> None:
    browser.execute_script("const e = document.getElementById(arguments[0]); e.value = arguments[1];"
                           "e.dispatchEvent(new Event('change'));", element_id, str(value))


def watch(browser) -> None:
    """Record every status text and preview image the page shows from now on (window.seen)."""
    browser.execute_script("""
        window.seen = {status: [], previews: 0};
        new MutationObserver(() => window.seen.status.push(document.getElementById('status').textContent))
            .observe(document.getElementById('status'), {childList: true, characterData: true, subtree: true});
        new MutationObserver(() => window.seen.previews++)
            .observe(document.getElementById('preview'), {attributes: true, attributeFilter: ['src']});""")


def shoot(browser, tmp_path, name: str) -> None:
    path = tmp_path / name
    assert browser.save_screenshot(str(path)) and path.stat().st_size > 10_000
    if os.environ.get("DITLAB_SCREENSHOT_DIR"):
        shutil.copy(path, os.path.join(os.environ["DITLAB_SCREENSHOT_DIR"], name))


def test_pick_a_class_generate_and_download(server, browser, tmp_path):
    open_page(browser, server.url)
    assert browser.execute_script("return document.getElementById('model').value") == "digits"
    assert not browser.find_element("id", "frames").is_displayed()  # an image model: no frames, no prompt
    assert not browser.find_element("id", "prompt").is_displayed()
    options = browser.execute_script("return [...document.querySelectorAll('#class option')].map(o => o.text)")
    assert options == ["all classes"] + [f"{i}: {i}" for i in range(10)]  # the run's class names
    set_value(browser, "class", 7)
    set_value(browser, "num", 3)
    browser.find_element("id", "generate").click()
    wait_for(browser, "document.querySelectorAll('#gallery .card img.sample').length === 3")
    status = browser.find_element("id", "status").text
    assert status.startswith("Done: 3 image(s)"), status
    settings = browser.find_element("css selector", "#gallery .card .settings").text
    assert "digits" in settings and "class 7" in settings and "ddim, 10 steps" in settings
    href = browser.execute_script("return document.querySelector('#gallery .card a').href")
    png = httpx.get(href)
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    npz = browser.execute_script("return document.querySelector('#gallery .downloads a').href")
    assert httpx.get(npz).content[:2] == b"PK"  # a zip: the .npz
    shoot(browser, tmp_path, "serve_page.png")


def test_progress_and_live_preview_then_the_image(server, browser, tmp_path):
    open_page(browser, server.url)
    set_value(browser, "model", "slow")
    assert browser.execute_script("return [...document.querySelectorAll('#class option')].map(o => o.text)") == [
        "all classes", "0: left", "1: right", "2: up"]
    set_value(browser, "steps", 16)
    set_value(browser, "num", 2)
    watch(browser)
    browser.find_element("id", "generate").click()
    wait_for(browser, "document.querySelectorAll('#gallery .card img.sample').length === 2", timeout=120)
    seen = browser.execute_script("return window.seen")
    steps = [s for s in seen["status"] if s.startswith("Step ")]
    # progress between the first and the last step was shown (which steps arrive depends on the machine's load)
    assert steps and any(0 < int(s.split()[1]) < 16 for s in steps), seen["status"]
    assert seen["previews"] >= 1  # the x0 prediction was shown while it ran
    shoot(browser, tmp_path, "after_progress.png")


def test_cancel_a_long_generation(server, browser, tmp_path):
    open_page(browser, server.url)
    set_value(browser, "model", "slow")
    set_value(browser, "steps", 1000)
    browser.find_element("id", "generate").click()
    wait_for(browser, "document.getElementById('status').textContent.startsWith('Step ')", timeout=60)
    assert browser.find_element("id", "cancel").is_enabled()
    browser.find_element("id", "cancel").click()
    text = wait_for(browser, "document.getElementById('status').textContent.startsWith('Cancelled at step') && "
                             "document.getElementById('status').textContent", timeout=30)
    step = int(text.split()[3])
    assert step < 1000, text
    deadline = time.monotonic() + 30  # the server stops the work too: its worker is free again
    while httpx.get(f"{server.url}/api/health").json()["running"]:
        assert time.monotonic() < deadline, "the server went on after the cancel"
        time.sleep(0.1)
    assert browser.find_element("id", "generate").is_enabled()
    shoot(browser, tmp_path, "cancelled.png")


def test_a_bad_value_is_shown_beside_its_field(server, browser, tmp_path):
    open_page(browser, server.url)
    set_value(browser, "steps", 5000)
    browser.find_element("id", "generate").click()
    error = wait_for(browser, "document.querySelector('.error[data-for=steps]').textContent")
    assert "steps must be between 1 and 1000, got 5000" in error
    assert "invalid" in browser.find_element("css selector", ".field[data-field=steps]").get_attribute("class")
    set_value(browser, "steps", 4)
    set_value(browser, "num", 40)
    browser.find_element("id", "generate").click()
    wait_for(browser, "document.querySelector('.error[data-for=num]').textContent.includes('num must be between 1')")
    assert browser.find_element("css selector", ".error[data-for=steps]").text == ""  # the old error is gone
    shoot(browser, tmp_path, "error.png")
    set_value(browser, "model", "noise")  # an unconditional model: no class picker, still generates
    assert not browser.find_element("id", "class").is_displayed()
    assert not browser.find_element("id", "frames").is_displayed()
    set_value(browser, "num", 1)
    browser.find_element("id", "generate").click()
    wait_for(browser, "document.querySelectorAll('#gallery .card').length === 1")
    assert "unconditional" in browser.find_element("css selector", "#gallery .card .settings").text


@pytest.fixture(scope="module")
def fake_server():
    """Stand-in text and video pipelines served in this process (the page must adapt to what a model takes)."""
    import uvicorn

    models = ServedModels({"words": text_pipeline(), "clips": video_pipeline(), "shapes": tiny_pipeline(3)})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(models, Limits()), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_the_page_offers_prompts_for_text_models_and_frames_for_video(fake_server, browser, tmp_path):
    open_page(browser, fake_server)
    shown = "(id) => document.getElementById(id).offsetParent !== null"  # laid out, i.e. visible
    assert browser.execute_script(f"return ({shown})('prompt')")  # text model first: a prompt box
    assert not browser.execute_script(f"return ({shown})('class') || ({shown})('frames')")
    browser.find_element("id", "prompt").send_keys("a thick seven")
    browser.find_element("id", "negative_prompt").send_keys("blurry")
    set_value(browser, "cfg", 2)
    browser.find_element("id", "generate").click()
    wait_for(browser, "document.querySelectorAll('#gallery .card').length === 1")
    assert "“a thick seven”" in browser.find_element("css selector", "#gallery .card .settings").text
    set_value(browser, "model", "clips")
    assert browser.execute_script(f"return ({shown})('frames') && ({shown})('fps') && !({shown})('prompt')")
    assert browser.execute_script("return document.getElementById('frames').value") == "3"
    set_value(browser, "num", 2)
    browser.find_element("id", "generate").click()
    wait_for(browser, "document.querySelectorAll('#gallery .card').length === 2")
    srcs = browser.execute_script("return [...document.querySelectorAll('#gallery .card img')].map(i => i.src)")
    assert srcs[0].startswith("data:image/gif;base64,")
    links = browser.execute_script("return [...document.querySelectorAll('#gallery .card .downloads a')]"
                                   ".map(a => a.textContent)")
    assert {"GIF 0", "MP4 1", "all as .npz"} <= set(links)
    shoot(browser, tmp_path, "video.png")
