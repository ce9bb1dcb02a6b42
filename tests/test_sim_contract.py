"""Contract: the simulator answers every captured ComfyUI scenario as the real server did.

The scenarios one folder down (comfyui-protocol/newer/) are one scripted client's session with a
real ComfyUI 0.33.0 and with 0.3.64; each is replayed against the simulator started as that
version.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import httpx
import pytest

from tests.conftest import SHARED
from tests.support.processes import SimNodeProcess, wait_until
from tests.support.replay import STRICT_KEYS, replay

SCENARIOS = sorted((SHARED / "comfyui-protocol").glob("*.json"))
NEWER = SHARED / "comfyui-protocol" / "newer"
NEWER_VERSIONS = sorted(p.name.removeprefix("v") for p in NEWER.glob("v*") if p.is_dir())
# The jobs API's outcome words and the reported version compare by value too.
NEWER_STRICT_KEYS = frozenset(STRICT_KEYS | {"status", "error", "cancelled", "has_more",
                                             "mediaType", "comfyui_version",
                                             "required_frontend_version"})
# Long enough that a request sent after step 1's progress message reaches the simulator before
# step 2 ends (the targeted interrupts and cancels of a running prompt), on a busy machine too:
# the probe deletes pending D 4 ms after interrupting running B, and D must still be pending
# when that delete lands (1 s steps lost this race once on a loaded 2-core CI machine).
NEWER_STEP_MS = 2500
INTERRUPT_STEP_MS = 400


def _recorded_prompts(scenario: dict[str, Any]) -> dict[str, dict[str, Any]]:
    prompts = {}
    for exchange in scenario["http"]:
        if exchange["method"] == "POST" and exchange["path"] == "/prompt" \
                and exchange["status"] == 200:
            prompts[exchange["response_body"]["prompt_id"]] = exchange["request_body"]["prompt"]
    return prompts


def _warm_up_graph(scenario: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any] | None:
    """The nodes the real server already had cached when the scenario's first prompt ran."""
    cached_messages = sorted(
        (m for s in scenario["ws"].values() for m in s["messages"]
         if m.get("type") == "execution_cached"), key=lambda m: m["seq"])
    if not cached_messages or not cached_messages[0]["data"]["nodes"]:
        return None
    first = cached_messages[0]["data"]
    graph = _recorded_prompts(scenario)[first["prompt_id"]]
    warm = {node_id: graph[node_id] for node_id in first["nodes"]}
    if not any(object_info[n["class_type"]]["output_node"] for n in warm.values()):
        image_node = next(node_id for node_id, n in warm.items()
                          if "IMAGE" in object_info[n["class_type"]]["output"])
        warm["warmup_preview"] = {"class_type": "PreviewImage",
                                  "inputs": {"images": [image_node, 0]}}
    return warm


def _prepare(scenario: dict[str, Any], sim: SimNodeProcess) -> None:
    """Put the simulator in the state the real server was in when the capture began."""
    produced = {img["filename"] for s in scenario["ws"].values() for m in s["messages"]
                if m.get("type") == "executed" for img in (m["data"]["output"] or {}).get(
                    "images", [])}
    for exchange in scenario["http"]:
        if exchange["path"].startswith("/view?") and exchange["status"] == 200 \
                and "type=input" not in exchange["path"]:
            name = exchange["path"].split("filename=")[1].split("&")[0]
            if name not in produced:
                (sim.base_dir / "output").mkdir(exist_ok=True)
                from PIL import Image
                Image.new("RGBA", (8, 8), (1, 2, 3, 255)).save(sim.base_dir / "output" / name)
    object_info = httpx.get(f"{sim.url}/object_info").json()
    warm = _warm_up_graph(scenario, object_info)
    if warm is None:
        return
    answer = httpx.post(f"{sim.url}/prompt", json={"prompt": warm}).json()
    wait_until(lambda: httpx.get(f"{sim.url}/history/{answer['prompt_id']}").json(), 20,
               "the warm-up prompt to finish")
    httpx.post(f"{sim.url}/history", json={"clear": True})


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_simulator_reproduces_captured_scenario(path: pathlib.Path, tmp_path: pathlib.Path,
                                                shared_dir: pathlib.Path) -> None:
    scenario = json.loads(path.read_text())
    flags = scenario["server_flags"]
    extra = ["--checkpoints", "random_sd15.safetensors"]
    if "--preview-method" in flags:
        extra += ["--preview-method", flags[flags.index("--preview-method") + 1]]
    # A replayed interrupt is sent once the server has sent what the real one had before it;
    # it must land within the sampler step running then, or one more `progress` goes out than
    # in the capture. 50 ms steps left too little room on a loaded machine (CI saw it).
    interrupts = any(e["path"].startswith("/interrupt") for e in scenario["http"])
    sim = SimNodeProcess(tmp_path / "sim", *extra,
                         step_ms=INTERRUPT_STEP_MS if interrupts else 50)
    try:
        _prepare(scenario, sim)
        replayer = replay(scenario, sim.url)
        assert replayer.differences() == [], "\n".join(replayer.differences())
    finally:
        sim.stop()


def test_every_scenario_file_is_replayed(shared_dir: pathlib.Path) -> None:
    # A transcript added later must not be silently left out of the contract.
    assert len(SCENARIOS) == len(list((shared_dir / "comfyui-protocol").glob("*.json"))) >= 11


# --- comfyui-protocol/newer: the probe sessions ---------------------------------------------------
def _probe_exchange(exchange: dict[str, Any], full_object_info: dict[str, Any]) -> dict[str, Any]:
    """A probe HTTP record in the transcript format the replayer reads."""
    converted = {k: exchange[k] for k in ("seq", "t_ms", "label", "method", "path", "status")
                 if k in exchange}
    converted["request_body"] = exchange.get("request_body")
    content_type = exchange.get("content_type")
    converted["response_headers"] = {"Content-Type": content_type} if content_type else {}
    if "response_body_summary" in exchange:
        # The probe kept only the node count of /object_info; its whole answer is saved beside it.
        converted["response_body"] = {"_truncated": True, **full_object_info}
    elif "response_text" in exchange:
        converted["response_text"] = exchange["response_text"]
    elif exchange.get("response_body") in (None, ""):  # an empty body, JSON-less
        converted["response_bytes"] = {"length": 0, "first_16_bytes_hex": ""}
    else:
        converted["response_body"] = exchange["response_body"]
    return converted


def _probe_extra_checks(folder: pathlib.Path, first_seq: int,
                        first_t_ms: float) -> list[dict[str, Any]]:
    """extra_checks.json ran after the probe, with no socket open: appended in order. Where its
    history read shows the reused id's re-run (its number is the reuse POST's), wait for it."""
    checks = json.loads((folder / "extra_checks.json").read_text())
    post_numbers = {c["response_body"]["prompt_id"]: c["response_body"]["number"]
                    for c in checks if c["method"] == "POST" and c["path"] == "/prompt"
                    and c["status"] == 200}
    out = []
    for index, check in enumerate(checks):
        check = {**check, "seq": first_seq + index, "t_ms": first_t_ms + index}
        body = check.get("response_body")
        if check["path"].startswith("/history/") and isinstance(body, dict):
            check["wait_for_rerun"] = any(post_numbers.get(pid) == entry["prompt"][0]
                                          for pid, entry in body.items())
        out.append(check)
    return out


def probe_scenario(folder: pathlib.Path, known_classes: set[str] | None) -> dict[str, Any]:
    """newer/<version>/probe.json plus extra_checks.json as one replayable scenario.

    The probe recorded its sockets' frames but not their connections: each connects (with the
    client id its hello shows) just before its first frame, the feature-flags socket sends its
    flags after the hello and closes after the reply (it received nothing else), and the main
    socket closes after the probe, before the extra checks. `known_classes` limits the
    /object_info comparison to the classes a simulator of that version claims to serve."""
    probe = json.loads((folder / "probe.json").read_text())
    full = json.loads((folder / "object_info_full.json").read_text())
    if known_classes is not None:
        full = {name: spec for name, spec in full.items() if name in known_classes}
    http = [_probe_exchange(e, full) for e in probe["http"]]
    last_seq = max([e["seq"] for e in http] +
                   [m["seq"] for ms in probe["ws"].values() for m in ms])
    end_ms = max(e["t_ms"] for e in probe["http"])
    http += [_probe_exchange(e, full) | {k: e[k] for k in ("wait_for_rerun",) if k in e}
             for e in _probe_extra_checks(folder, last_seq + 1, end_ms + 1)]
    ws: dict[str, Any] = {}
    for label, messages in probe["ws"].items():
        sid = messages[0]["data"]["sid"]
        entry: dict[str, Any] = {"client_id": sid, "path": f"/ws?clientId={sid}",
                                 "connect_seq": messages[0]["seq"] - 0.25, "messages": messages,
                                 "sent": []}
        if any(m.get("type") == "feature_flags" for m in messages):
            entry["sent"] = [{"seq": messages[0]["seq"] + 0.5, "data": {
                "type": "feature_flags", "data": {"supports_preview_metadata": True}}}]
            entry["closed_at_ms"] = messages[-1]["t_ms"]
        else:
            entry["closed_at_ms"] = end_ms
        ws[label] = entry
    return {"scenario": f"newer_probe_{folder.name}", "http": http, "ws": ws}


def _newer_sim(tmp_path: pathlib.Path, version: str) -> SimNodeProcess:
    # Both probed servers had ComfyUI's stock input/example.png, which LoadImage lists.
    from PIL import Image
    (tmp_path / "sim" / "input").mkdir(parents=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "sim" / "input" / "example.png")
    return SimNodeProcess(tmp_path / "sim", "--checkpoints", "random_sd15.safetensors",
                          "--comfyui-version", version, step_ms=NEWER_STEP_MS)


@pytest.mark.parametrize("version", NEWER_VERSIONS)
def test_simulator_reproduces_the_newer_probe_as_that_version(
        version: str, tmp_path: pathlib.Path, shared_dir: pathlib.Path) -> None:
    # Given a simulator started as the version the probe ran against
    sim = _newer_sim(tmp_path, version)
    try:
        served = set(httpx.get(f"{sim.url}/object_info").json())
        scenario = probe_scenario(NEWER / f"v{version}", served)
        # When the probe's session is replayed against it
        replayer = replay(scenario, sim.url, NEWER_STRICT_KEYS)
        # Then every answer and every socket's messages match the real server's
        assert replayer.differences() == [], "\n".join(replayer.differences())
    finally:
        sim.stop()


def test_simulated_0_33_0_serves_every_captured_node_class(tmp_path: pathlib.Path,
                                                           shared_dir: pathlib.Path) -> None:
    # Given the whole /object_info of a real 0.33.0 and a simulator started as 0.33.0
    real = json.loads((NEWER / "v0.33.0" / "object_info_full.json").read_text())
    sim = _newer_sim(tmp_path, "0.33.0")
    try:
        # When it is asked for its /object_info
        served = httpx.get(f"{sim.url}/object_info").json()
    finally:
        sim.stop()
    # Then all 634 classes are there, and SaveImage has gained its IMAGE output
    assert len(real) == 634
    assert set(real) <= set(served)
    assert served["SaveImage"]["output"] == ["IMAGE"]
    assert served["KSampler"]["category"] == "model/sampling"


def test_every_newer_probe_is_replayed(shared_dir: pathlib.Path) -> None:
    # A version added to newer/ later must not be silently left out of the contract.
    assert NEWER_VERSIONS == ["0.3.64", "0.33.0"]
    assert all((NEWER / f"v{v}" / "probe.json").is_file() for v in NEWER_VERSIONS)
