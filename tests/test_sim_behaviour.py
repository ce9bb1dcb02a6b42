"""The simulator's own behaviour: timing model, outputs, interrupts and fault injection."""

from __future__ import annotations

import asyncio
import io
import json
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from PIL import Image

from tests.conftest import SHARED
from tests.support.comfy_client import Run, run_prompt, txt2img
from tests.support.processes import ROOT, SimNodeProcess, wait_until


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimNodeProcess]:
    node = SimNodeProcess(tmp_path_factory.mktemp("sim"), step_ms=20)
    yield node
    node.stop()


def test_txt2img_reports_each_step_and_saves_a_png_of_the_requested_size(
        sim: SimNodeProcess) -> None:
    # Given a txt2img graph with 5 sampling steps and a 320x256 latent, batch of 2
    run = asyncio.run(run_prompt(sim.url, txt2img(steps=5, batch=2)))
    # Then the sampler reported one progress message per step
    assert [(p["node"], p["value"], p["max"]) for p in run.of_type("progress")] == [
        ("3", step, 5) for step in range(1, 6)]
    assert run.terminal == "execution_success"
    # And history lists both images, and /view serves them as PNGs of that size
    entry = httpx.get(f"{sim.url}/history/{run.prompt_id}").json()[run.prompt_id]
    saved = entry["outputs"]["9"]["images"]
    assert len(saved) == 2 and all(s["type"] == "output" for s in saved)
    for image in saved:
        view = httpx.get(f"{sim.url}/view", params={"filename": image["filename"]})
        assert view.headers["content-type"] == "image/png"
        picture = Image.open(io.BytesIO(view.content))
        assert picture.size == (320, 256)
        assert json.loads(picture.info["prompt"])["3"]["inputs"]["steps"] == 5


def test_same_seed_gives_the_same_picture_and_another_seed_another(sim: SimNodeProcess) -> None:
    def picture(seed: int, prefix: str) -> bytes:
        graph = txt2img(seed=seed)
        graph["9"]["inputs"]["filename_prefix"] = prefix  # defeat the cache, keep the pixels
        run = asyncio.run(run_prompt(sim.url, graph))
        name = run.of_type("executed")[0]["output"]["images"][0]["filename"]
        image = Image.open(io.BytesIO(httpx.get(f"{sim.url}/view",
                                                params={"filename": name}).content))
        return image.tobytes()
    assert picture(11, "a") == picture(11, "b")
    assert picture(11, "c") != picture(12, "d")


def test_storydiffusion_template_gives_one_image_per_scene_without_progress(
        sim: SimNodeProcess) -> None:
    # Given the customer's StoryDiffusion workflow with three scenes for two characters
    graph = json.loads((SHARED / "storydiffusion" / "txt2img_api.json").read_text())
    graph["78"]["inputs"].update({
        "role_text": "[Ann] a woman, red coat.\n[Bo] a man, green hat.",
        "scene_text": "[Ann] walks\n[Bo] sits\n[Ann] sleeps", "width": 512, "height": 384})
    graph["352"]["inputs"]["steps"] = 2
    run = asyncio.run(run_prompt(sim.url, graph))
    # Then it succeeds with three images of the requested size, and (like the real plugin,
    # which samples through a console progress bar) sends no progress messages
    assert run.terminal == "execution_success"
    assert run.of_type("progress") == []
    images = run.of_type("executed")[0]["output"]["images"]
    assert len(images) == 3
    for image in images:
        data = httpx.get(f"{sim.url}/view", params={"filename": image["filename"]}).content
        assert Image.open(io.BytesIO(data)).size == (512, 384)


def test_a_targeted_interrupt_stops_the_running_prompt_within_one_step(
        fresh_sim: SimNodeProcess) -> None:
    # Steps of 2 s: the interrupt, sent once step 1 is reported, lands during step 2 unless
    # its trip takes seconds, so no step after step 2 may be reported. (Steps of 250 ms made
    # the test fail whenever a busy machine delayed the trip past half a second.)
    httpx.post(f"{fresh_sim.url}/sim/faults", json={"step_ms": 2000}).raise_for_status()

    async def interrupt_after_first_step(client: httpx.AsyncClient, run: Run,
                                         message: dict[str, Any]) -> None:
        if message["type"] == "progress" and message["data"]["value"] == 1:
            await client.post("/interrupt", json={"prompt_id": run.prompt_id})
    run = asyncio.run(run_prompt(fresh_sim.url, txt2img(steps=200, seed=99),
                                 on_message=interrupt_after_first_step))
    assert run.terminal == "execution_interrupted"
    assert max(p["value"] for p in run.of_type("progress")) <= 2


def test_front_puts_a_prompt_ahead_of_the_queue(sim: SimNodeProcess) -> None:
    async def scenario() -> tuple[list[str], str, str]:
        async with httpx.AsyncClient(base_url=sim.url, timeout=10) as client:
            blocker = (await client.post("/prompt", json={
                "prompt": txt2img(steps=10_000, seed=1001)})).json()["prompt_id"]
            back = (await client.post("/prompt", json={
                "prompt": txt2img(steps=1, seed=1002)})).json()["prompt_id"]
            front = (await client.post("/prompt", json={
                "prompt": txt2img(steps=1, seed=1003), "front": True})).json()["prompt_id"]
            queue = (await client.get("/queue")).json()
            assert [item[1] for item in queue["queue_running"]] == [blocker]
            await client.post("/interrupt", json={"prompt_id": blocker})
            for prompt_id in (blocker, back, front):
                await asyncio.to_thread(wait_until, lambda pid=prompt_id: httpx.get(
                    f"{sim.url}/history/{pid}").json(), 20, "prompts to finish")
            history = (await client.get("/history")).json()
            # history lists prompts in the order they finished
            return [pid for pid in history if pid in (back, front)], front, back
    finished, front, back = asyncio.run(scenario())
    assert finished == [front, back]


@pytest.fixture()
def fresh_sim(tmp_path: pathlib.Path) -> Iterator[SimNodeProcess]:
    node = SimNodeProcess(tmp_path / "sim", step_ms=20)
    yield node
    node.stop()


def _faults(sim: SimNodeProcess, **changes: Any) -> dict[str, Any]:
    answer = httpx.post(f"{sim.url}/sim/faults", json=changes, timeout=5)
    answer.raise_for_status()
    result: dict[str, Any] = answer.json()
    return result


def test_fail_next_makes_that_many_prompts_fail_with_an_execution_error(
        fresh_sim: SimNodeProcess) -> None:
    _faults(fresh_sim, fail_next=1, failure_message="CUDA out of memory")
    failed = asyncio.run(run_prompt(fresh_sim.url, txt2img(seed=1)))
    (error,) = failed.of_type("execution_error")
    assert error["exception_message"] == "CUDA out of memory\n"
    assert error["exception_type"] == "RuntimeError"
    history = httpx.get(f"{fresh_sim.url}/history/{failed.prompt_id}").json()
    assert history[failed.prompt_id]["status"]["status_str"] == "error"
    assert asyncio.run(run_prompt(fresh_sim.url, txt2img(seed=2))).terminal == "execution_success"


def test_a_hung_node_answers_nothing_until_released(fresh_sim: SimNodeProcess) -> None:
    _faults(fresh_sim, hang=True)
    with pytest.raises(httpx.TimeoutException):
        httpx.get(f"{fresh_sim.url}/queue", timeout=0.5)
    with pytest.raises((TimeoutError, websockets.InvalidHandshake, OSError)):
        asyncio.run(asyncio.wait_for(websockets.connect(fresh_sim.ws_url), 0.5))
    _faults(fresh_sim, hang=False)
    assert httpx.get(f"{fresh_sim.url}/queue", timeout=5).status_code == 200


def test_refuse_ws_rejects_websocket_clients(fresh_sim: SimNodeProcess) -> None:
    _faults(fresh_sim, refuse_ws=True)

    async def connect() -> None:
        async with websockets.connect(fresh_sim.ws_url, open_timeout=5) as ws:
            await asyncio.wait_for(ws.recv(), 5)
    with pytest.raises((websockets.InvalidStatus, websockets.ConnectionClosed)):
        asyncio.run(connect())
    _faults(fresh_sim, refuse_ws=False)
    asyncio.run(connect())


def test_step_time_can_be_changed_at_run_time(fresh_sim: SimNodeProcess) -> None:
    assert httpx.get(f"{fresh_sim.url}/sim/info").json()["step_ms"] == 20
    _faults(fresh_sim, step_ms=5)
    assert httpx.get(f"{fresh_sim.url}/sim/info").json()["step_ms"] == 5
    assert httpx.post(f"{fresh_sim.url}/sim/faults", json={"bogus": 1}).status_code == 400


def test_crash_fault_kills_the_process(fresh_sim: SimNodeProcess) -> None:
    _faults(fresh_sim, crash=True)
    wait_until(lambda: not fresh_sim.alive(), 10, "the simulator to exit")
    assert fresh_sim.proc.returncode != 0


def test_the_console_script_runs_the_simulator() -> None:
    exe = pathlib.Path(sys.executable).parent / "comfy-service"
    answer = subprocess.run([str(exe), "sim", "--help"], capture_output=True, text=True,
                            timeout=30, cwd=ROOT, check=True)
    assert "--step-ms" in answer.stdout


@pytest.mark.parametrize("version,fully_cached", [("0.3.64", False), ("0.33.0", True)])
def test_an_older_graph_is_fully_cached_only_by_0_33_0s_ram_pressure_cache(
        tmp_path: pathlib.Path, version: str, fully_cached: bool) -> None:
    node = SimNodeProcess(tmp_path / "sim", "--comfyui-version", version, step_ms=5)
    try:
        # Given graph A ran, then graph B (another seed) ran after it
        asyncio.run(run_prompt(node.url, txt2img(steps=2, seed=1)))
        asyncio.run(run_prompt(node.url, txt2img(steps=2, seed=2)))
        # When graph A is submitted again
        again = asyncio.run(run_prompt(node.url, txt2img(steps=2, seed=1)))
    finally:
        node.stop()
    # Then 0.33.0 reuses every node of it; 0.3.64 kept only B's results and samples again
    (cached,) = again.of_type("execution_cached")
    assert (sorted(cached["nodes"]) == sorted(txt2img())) is fully_cached
    assert bool(again.of_type("progress")) is not fully_cached


def test_a_0_33_0_job_can_be_followed_and_cancelled_through_the_jobs_api(
        tmp_path: pathlib.Path) -> None:
    node = SimNodeProcess(tmp_path / "sim", "--comfyui-version", "0.33.0", step_ms=200)
    try:
        # Given a slow prompt running and a second one waiting behind it
        first = httpx.post(f"{node.url}/prompt", json={"prompt": txt2img(steps=50)}).json()
        second = httpx.post(f"{node.url}/prompt", json={"prompt": txt2img(steps=50, seed=9)}
                            ).json()
        wait_until(lambda: httpx.get(f"{node.url}/api/jobs/{first['prompt_id']}").json()
                   ["status"] == "in_progress", 10, "the first job to start")
        # When both are cancelled through the jobs API
        cancel = httpx.post(f"{node.url}/api/jobs/cancel",
                            json={"job_ids": [second["prompt_id"], first["prompt_id"]]})
        # Then the waiting one is gone and the running one ends as cancelled
        assert cancel.json() == {"cancelled": True}
        assert httpx.get(f"{node.url}/api/jobs/{second['prompt_id']}").status_code == 404
        job = wait_until(lambda: (lambda j: j if j["status"] != "in_progress" else None)(
            httpx.get(f"{node.url}/api/jobs/{first['prompt_id']}").json()), 10,
            "the first job to end")
        assert job["status"] == "cancelled"
        assert job["execution_status"]["status_str"] == "error"
        assert "create_time" in job["workflow"]["extra_data"]
        assert httpx.get(f"{node.url}/system_stats").json()["system"]["comfyui_version"] \
            == "0.33.0"
    finally:
        node.stop()
