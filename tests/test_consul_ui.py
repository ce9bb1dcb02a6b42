"""The Consul UI, in headless Chromium, lists every ComfyUI node and shows its GPU Meta.

UPDATE_SCREENSHOTS=1 also writes the picture to docs/images/consul-ui-comfyui.png (committing
it is a deliberate step); otherwise it stays in the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from PIL import Image

from comfy_service.polling import wait_until
from node_sidecar.meta import service_id
from tests.agents_fixtures import ConsulAgent, consul_agent_factory  # noqa: F401  (fixture)
from tests.support.browser import Chromium, headless_chromium
from tests.support.mesh import Sidecar
from tests.support.processes import ROOT, SimNodeProcess

SERVICE = "comfyui"  # the name sidecars register by default (node_sidecar/settings.py)
# (node name, GPU utilisation %, GPU UUID), with UUIDs in nvidia-smi's format.
NODES = [("node0", 18.0, "GPU-3b9f6c2e-7a41-4d8e-b5c0-91e2d4f7a6b1"),
         ("node1", 47.0, "GPU-c81d0e5a-2f3b-4a96-8e1d-6b7c5a4f3e20"),
         ("node2", 83.0, "GPU-5e2a9b7d-0c6f-4b18-a3d2-e9f8c7b6a5d4")]
SCREENSHOT = ROOT / "docs" / "images" / "consul-ui-comfyui.png"
PAGE_TIMEOUT = 30.0

# What the Consul 1.16 UI draws: instance names in the service's instance list, and the
# key/value rows of an instance's "Tags & Meta" tab.
INSTANCE_NAMES = """Array.from(document.querySelectorAll(
    '.consul-service-instance-list .header a')).map(a => a.textContent.trim())"""
LIST_BOTTOM = """Math.max(...Array.from(document.querySelectorAll(
    '.consul-service-instance-list li')).map(li => li.getBoundingClientRect().bottom))"""
# Scrolls the Meta table (it scrolls inside the page) to bring a key's row fully into view.
SHOW_META_ROW = """(key => {
    const row = Array.from(document.querySelectorAll('.consul-metadata-list tbody tr'))
        .find(tr => tr.cells.length === 2 && tr.cells[0].textContent.trim() === key);
    if (!row) return false;
    row.scrollIntoView({block: 'end'});
    return row.getBoundingClientRect().bottom <= window.innerHeight;
})"""
META_ROWS = """Object.fromEntries(Array.from(document.querySelectorAll(
    '.consul-metadata-list tbody tr')).filter(tr => tr.cells.length === 2)
    .map(tr => [tr.cells[0].textContent.trim(), tr.cells[1].textContent.trim()]))"""


@dataclass(frozen=True)
class Node:
    service_id: str
    gpu_meta: dict[str, str]  # the Meta the sidecar derives from its GPU readings

    def shown_in(self, meta_rows: dict[str, str]) -> bool:
        return meta_rows.items() >= self.gpu_meta.items()


def gpu_meta(readings_file: pathlib.Path) -> dict[str, str]:
    reading = json.loads(readings_file.read_text())
    return {"gpu_uuid": reading["uuid"], "gpu_name": reading["name"],
            "gpu_util": f"{reading['utilization_pct']:.0f}",
            "vram_used_mb": f"{reading['memory_used_mb']:.0f}",
            "vram_total_mb": f"{reading['memory_total_mb']:.0f}"}


@pytest.fixture()
def cluster(tmp_path: pathlib.Path, consul_agent_factory: Any,  # noqa: F811
            ) -> Iterator[tuple[ConsulAgent, list[Node]]]:
    """A private Consul agent (its UI shows our service alone) and simulated nodes whose real
    sidecars register with it."""
    consul: ConsulAgent = consul_agent_factory()
    sims: list[SimNodeProcess] = []
    sidecars: list[Sidecar] = []
    try:
        for name, util, gpu_uuid in NODES:
            sims.append(SimNodeProcess(tmp_path / name, step_ms=20))
            sidecars.append(Sidecar(tmp_path, sims[-1], consul.url, SERVICE, name, util,
                                    gpu_uuid))
        nodes = [Node(service_id(s.name, 0, s.sim.port), gpu_meta(s.readings))
                 for s in sidecars]

        def all_passing() -> bool:
            entries = httpx.get(f"{consul.url}/v1/health/service/{SERVICE}",
                                params={"passing": "true"}, timeout=5).json()
            return {e["Service"]["ID"] for e in entries} == {n.service_id for n in nodes}
        wait_until(all_passing, PAGE_TIMEOUT, f"{len(nodes)} passing {SERVICE} instances")
        yield consul, nodes
    finally:
        for sidecar in sidecars:  # all at once: each deregisters from Consul as it stops
            if sidecar.proc.alive():
                sidecar.proc.proc.terminate()
        for sidecar in sidecars:
            sidecar.proc.stop()
        for sim in sims:
            sim.stop()


@pytest.fixture()
def browser(tmp_path: pathlib.Path) -> Iterator[Chromium]:
    with headless_chromium(tmp_path / "chromium.log") as chromium:
        yield chromium


def stack_vertically(top: pathlib.Path, bottom: pathlib.Path, out: pathlib.Path) -> None:
    """One picture for the docs: two screenshots, one above the other, with a rule between."""
    gap = 6
    with Image.open(top) as upper, Image.open(bottom) as lower:
        picture = Image.new("RGB", (max(upper.width, lower.width),
                                    upper.height + gap + lower.height), (200, 200, 200))
        picture.paste(upper, (0, 0))
        picture.paste(lower, (0, upper.height + gap))
        picture.save(out, optimize=True)


def test_the_consul_ui_lists_every_node_with_its_gpu_meta(
        browser: Chromium, cluster: tuple[ConsulAgent, list[Node]],
        tmp_path: pathlib.Path) -> None:
    # Given three nodes whose sidecars registered them, with their GPU Meta, in Consul
    consul, nodes = cluster
    # When the service's instance list is opened
    browser.navigate(f"{consul.url}/ui/dc1/services/{SERVICE}/instances")
    # Then it lists every node by its service id
    expected_ids = sorted(n.service_id for n in nodes)
    browser.wait_for(INSTANCE_NAMES, lambda names: sorted(names) == expected_ids,
                     PAGE_TIMEOUT, f"the instance list to name {expected_ids}")
    browser.evaluate("document.activeElement.blur()")  # no focus ring on the search box
    list_shot = browser.screenshot(tmp_path / "instances.png",
                                   height=browser.evaluate(LIST_BOTTOM) + 24)
    # And, clicking through as a reader would (the app stays loaded), each instance's
    # Tags & Meta tab shows that node's GPU Meta
    meta_shot: pathlib.Path | None = None
    for node in nodes:
        browser.click(f'.consul-service-instance-list a[href$="/{node.service_id}"]',
                      PAGE_TIMEOUT)
        browser.click(f'a[href$="/{node.service_id}/metadata"]', PAGE_TIMEOUT)
        browser.wait_for(META_ROWS, node.shown_in, PAGE_TIMEOUT,
                         f"{node.service_id}'s Meta to show {node.gpu_meta}")
        if meta_shot is None:  # the first node's Meta goes in the picture, GPU rows in view
            browser.wait_for(f"{SHOW_META_ROW}('gpu_uuid')", bool, PAGE_TIMEOUT,
                             "the gpu_uuid row in view")
            meta_shot = browser.screenshot(tmp_path / "metadata.png")
        browser.click(f'a[href$="/services/{SERVICE}"]', PAGE_TIMEOUT)  # back to the list
    assert meta_shot is not None
    picture = tmp_path / SCREENSHOT.name
    stack_vertically(list_shot, meta_shot, picture)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(picture, SCREENSHOT)
