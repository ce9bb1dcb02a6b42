"""The web console at /, in headless Chromium, against the whole service with API keys on.

UPDATE_SCREENSHOTS=1 also writes the pictures to docs/images/console-*.png (committing them is a
deliberate step); otherwise they stay in the test's temporary directory.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from collections.abc import Iterator

import pytest
from PIL import Image

from tests.support.browser import Chromium, headless_chromium
from tests.support.processes import ROOT
from tests.support.service import Stack, slow_body

KEY = "console-test-key"
DOCS_IMAGES = ROOT / "docs" / "images"
MAX_PICTURE_BYTES = 200_000
WINDOW = (1280, 1000)
PAGE_TIMEOUT = 30.0
TASK_TIMEOUT = 60.0
STEPS = 4

WORKFLOWS = "Array.from(document.querySelectorAll('#workflow option')).map(o => o.value)"
TASK_CARD = """(card => card && {id: card.dataset.taskId, status: card.dataset.status,
    progress: card.querySelector('progress').value})(document.querySelector('#tasks .task'))"""
STORED_TASKS = "JSON.parse(localStorage.getItem('comfy-service.tasks') || '[]')"
GALLERY_IMAGES = """Array.from(document.querySelectorAll('#gallery img')).map(img => ({
    src: img.src, width: img.complete ? img.naturalWidth : 0}))"""
NODE_ROWS = """Array.from(document.querySelectorAll('#nodes tbody tr[data-node]')).map(tr => ({
    name: tr.dataset.node, health: tr.querySelector('.health').textContent}))"""
REQUESTED_URLS = "performance.getEntriesByType('resource').map(e => e.name).concat([location.href])"
SCENE_CHOICES = "Array.from(document.querySelectorAll('#p-scenes-0-character option')).map(o => o.value)"


@pytest.fixture()
def stack(tmp_path: pathlib.Path) -> Iterator[Stack]:
    service = Stack(tmp_path / "stack", nodes=1, step_ms=20, env={"API_KEYS": KEY})
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture()
def browser(tmp_path: pathlib.Path) -> Iterator[Chromium]:
    with headless_chromium(tmp_path / "chromium.log", WINDOW) as chromium:
        yield chromium


def keep_picture(browser: Chromium, tmp_path: pathlib.Path, name: str) -> None:
    """A screenshot in 256 colours (small enough to commit), into the docs if asked to."""
    shot = browser.screenshot(tmp_path / f"{name}-raw.png")
    picture = tmp_path / f"{name}.png"
    with Image.open(shot) as raw:
        raw.convert("RGB").quantize(colors=256).save(picture, optimize=True)
    assert picture.stat().st_size < MAX_PICTURE_BYTES, (name, picture.stat().st_size)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(picture, DOCS_IMAGES / f"{name}.png")


def enter_key(browser: Chromium) -> None:
    """Once the console has asked for a key (its scripts run: the form is theirs), give it."""
    browser.wait_for("!document.getElementById('key-form').hidden", bool, PAGE_TIMEOUT,
                     "the console to ask for an API key")
    browser.fill("#api-key", KEY, PAGE_TIMEOUT)
    browser.click("#key-use", PAGE_TIMEOUT)


def test_the_console_runs_a_txt2img_task_live_and_shows_its_image_and_the_nodes(
        browser: Chromium, stack: Stack, tmp_path: pathlib.Path) -> None:
    # Given the service with API keys on, and its console opened in a new tab
    browser.navigate(f"{stack.url}/")
    # When the key is entered
    enter_key(browser)
    # Then the form offers every workflow, txt2img first chosen
    browser.wait_for(WORKFLOWS, lambda names: sorted(names or []) == sorted(
        w["name"] for w in stack.http.get("/api/v1/workflows").json()["workflows"]),
        PAGE_TIMEOUT, "the workflow list")
    assert browser.evaluate("document.getElementById('workflow').value") == "txt2img"
    # When a small txt2img form is filled in and submitted
    for name, value in {"prompt": "a lighthouse at dawn", "width": "256", "height": "256",
                        "steps": str(STEPS)}.items():
        browser.fill(f"#p-{name}", value, PAGE_TIMEOUT)
    browser.click("#submit-task", PAGE_TIMEOUT)
    # Then its card follows it to succeeded with a full progress bar
    card = browser.wait_for(TASK_CARD, lambda c: bool(c) and c["status"] == "succeeded",
                            TASK_TIMEOUT, "the task card to show succeeded")
    assert card["progress"] == 100
    # And it is the key's task, run as asked, and its progress came live over the event stream
    record = stack.task(card["id"])
    assert (record["status"], record["params"]["steps"], record["params"]["width"]) == \
        ("succeeded", STEPS, 256)
    stored = browser.evaluate(STORED_TASKS)
    assert stored[0]["task_id"] == card["id"] and stored[0]["progress"]["value"] == STEPS
    # And the gallery shows its image, fetched with the key into a blob: URL
    images = browser.wait_for(GALLERY_IMAGES, lambda found: bool(found) and found[0]["width"] > 0,
                              PAGE_TIMEOUT, "the output in the gallery")
    assert images[0]["src"].startswith("blob:")
    # And the nodes view lists every node as healthy
    nodes = sorted(n["name"] for n in stack.http.get("/api/v1/nodes").json()["nodes"])
    browser.wait_for(NODE_ROWS, lambda rows: sorted(r["name"] for r in rows or []) == nodes
                     and all(r["health"] == "healthy" for r in rows), PAGE_TIMEOUT,
                     f"the nodes view to list {nodes}")
    browser.evaluate("document.activeElement.blur()")
    keep_picture(browser, tmp_path, "console-txt2img")
    # And the key never went into a URL or the gateway's log
    assert not [url for url in browser.evaluate(REQUESTED_URLS) if KEY in url]
    assert KEY not in (stack.root / "gateway.log").read_text()


def test_the_console_draws_the_storydiffusion_lists_and_serves_a_strict_csp(
        browser: Chromium, stack: Stack, tmp_path: pathlib.Path) -> None:
    # Given the console's page as the gateway serves it, with no key
    page = stack.http.get("/", headers={"Authorization": ""})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in page.text  # modules only: no inline script for the CSP to allow
    # And the console opened with the key
    browser.navigate(f"{stack.url}/")
    enter_key(browser)
    browser.wait_for(WORKFLOWS, lambda names: "storydiffusion" in (names or []), PAGE_TIMEOUT,
                     "the workflow list")
    # When StoryDiffusion is chosen and a character named
    browser.fill("#workflow", "storydiffusion", PAGE_TIMEOUT)
    browser.fill("#p-characters-0-name", "Taylor", PAGE_TIMEOUT)
    browser.fill("#p-characters-0-description", "a woman, white T-shirt, blue hair",
                 PAGE_TIMEOUT)
    # Then each scene may name that character (the list item refers to characters.name)
    browser.wait_for(SCENE_CHOICES, lambda choices: choices == ["Taylor"], PAGE_TIMEOUT,
                     "the scene's character choices")
    browser.fill("#p-scenes-0-text", "reading on a hill", PAGE_TIMEOUT)
    browser.evaluate("document.activeElement.blur()")
    keep_picture(browser, tmp_path, "console-storydiffusion")


def test_a_task_cancelled_from_the_console_ends_cancelled(
        browser: Chromium, stack: Stack) -> None:
    # Given a task that cannot finish soon, submitted from the console
    browser.navigate(f"{stack.url}/")
    enter_key(browser)
    params = slow_body(steps=150)["params"]
    browser.wait_for(WORKFLOWS, lambda names: "txt2img" in (names or []), PAGE_TIMEOUT,
                     "the workflow list")
    for name in ("prompt", "width", "height", "steps", "seed"):
        browser.fill(f"#p-{name}", str(params[name]), PAGE_TIMEOUT)
    browser.click("#submit-task", PAGE_TIMEOUT)
    card = browser.wait_for(TASK_CARD, bool, PAGE_TIMEOUT, "the task card")
    # When its cancel button is clicked
    task_id = card["id"]
    browser.click(f'#tasks .task[data-task-id="{task_id}"] .cancel', PAGE_TIMEOUT)
    # Then the card shows it cancelled, with no cancel button left, as the service says
    browser.wait_for(TASK_CARD, lambda c: bool(c) and c["status"] == "cancelled", TASK_TIMEOUT,
                     "the task card to show cancelled")
    assert browser.evaluate("document.querySelector('#tasks .task .cancel').hidden") is True
    assert stack.wait_task(task_id)["status"] == "cancelled"
