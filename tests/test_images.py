"""The container images: linted, built from the lock `make test` installs, free of the simulator."""

from __future__ import annotations

import http.server
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import tomllib
from collections.abc import Callable, Iterator

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent
SERVICE = ROOT / "Dockerfile"
NODE = ROOT / "docker" / "comfyui.Dockerfile"
ENTRYPOINT = ROOT / "docker" / "comfyui-entrypoint.sh"
SERVICE_LOCK = "requirements/service.lock"
DEV_LOCK = "requirements/dev.lock"
SHIPPED = {"comfy_service", "gateway", "actors", "node_sidecar"}


def tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} missing from {BIN}: it comes with requirements/dev.lock (make venv)"
    return str(path)


def stages(dockerfile: pathlib.Path) -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, continuation lines joined, grouped by build stage."""
    result: list[list[tuple[str, str]]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword.upper(), rest.strip()))
    return result


def copies(dockerfile: pathlib.Path) -> list[tuple[str, str]]:
    """(source in the build context, destination) of every COPY that is not --from another stage."""
    found = []
    for stage in stages(dockerfile):
        for keyword, rest in stage:
            words = shlex.split(rest)
            if keyword == "COPY" and not any(w.startswith("--from") for w in words):
                paths = [w for w in words if not w.startswith("--")]
                found += [(source.rstrip("/"), paths[-1]) for source in paths[:-1]]
    return found


def pip_installs(commands: str) -> list[list[str]]:
    return [shlex.split(part.split("pip install", 1)[1])
            for part in re.split(r"&&|;|\n", commands) if "pip install" in part]


def lock_pins(path: str) -> dict[str, str]:
    text = (ROOT / path).read_text()
    return {canonicalize_name(name): version
            for name, version in re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", text, re.MULTILINE)}


@pytest.mark.parametrize("dockerfile", [SERVICE, NODE], ids=["service", "node"])
def test_dockerfile_passes_hadolint_with_the_project_config(dockerfile: pathlib.Path) -> None:
    result = subprocess.run([tool("hadolint"), "--config", str(ROOT / ".hadolint.yaml"), str(dockerfile)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_config_ignores_nothing_and_each_inline_waiver_has_a_reason(tmp_path: pathlib.Path) -> None:
    config = (ROOT / ".hadolint.yaml").read_text()
    assert re.search(r"^ignored: \[\]$", config, re.MULTILINE)
    for dockerfile in (SERVICE, NODE):
        lines = dockerfile.read_text().splitlines()
        for number, line in enumerate(lines):
            if line.startswith("# hadolint ignore="):
                reason = lines[number - 1]
                assert reason.startswith("# ") and "hadolint" not in reason, f"{dockerfile}:{number + 1}"
    # The config is in force: a copy of the service Dockerfile without its licence label fails.
    unlabelled = tmp_path / "Dockerfile"
    unlabelled.write_text(SERVICE.read_text().replace("org.opencontainers.image.licenses", "x.licenses"))
    result = subprocess.run([tool("hadolint"), "--config", str(ROOT / ".hadolint.yaml"), str(unlabelled)],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "DL3049" in result.stdout


def test_entrypoint_passes_shellcheck() -> None:
    result = subprocess.run([tool("shellcheck"), str(ENTRYPOINT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", [SERVICE, NODE], ids=["service", "node"])
def test_image_installs_python_dependencies_only_from_the_lock_make_test_installs(
        dockerfile: pathlib.Path) -> None:
    # Given the Makefile's install rule
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
    make_installs = pip_installs(recipe)
    assert ["-q", "--require-hashes", "-r", SERVICE_LOCK, "-r", DEV_LOCK] in make_installs
    assert ["-q", "--no-deps", "-e", "."] in make_installs
    # When the image's last stage installs into the service's Python
    destinations = {dest: source for source, dest in copies(dockerfile)}
    final = stages(dockerfile)[-1]
    runs = [rest for keyword, rest in final if keyword == "RUN" and "pip install" in rest]
    service_installs = [args for run in runs for args in pip_installs(run)
                        if not any("torch" in a or "comfyui" in a or "storydiffusion" in a for a in args)]
    # Then it is the same lock, with hashes, and the project's own wheel without dependencies
    locks = [destinations[args[args.index("-r") + 1]] for args in service_installs if "-r" in args]
    assert locks == [SERVICE_LOCK]
    for args in service_installs:
        assert "--require-hashes" in args or ("--no-deps" in args and args[-1].endswith("*.whl")), args


def test_lock_pins_every_requirement_of_pyproject_and_agrees_across_files() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    service, dev = lock_pins(SERVICE_LOCK), lock_pins(DEV_LOCK)
    wanted = [(SERVICE_LOCK, service, r) for r in project["dependencies"]]
    wanted += [(DEV_LOCK, dev, r) for extra in ("test", "local")
               for r in project["optional-dependencies"][extra]]
    for path, pins, line in wanted:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in {path}: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{path}: {name}=={pins[name]}"
    assert "aiohttp" in service  # py-consul[asyncio]
    assert {n: v for n, v in dev.items() if n in service} == {n: service[n] for n in dev if n in service}
    for path in (SERVICE_LOCK, DEV_LOCK):
        text = (ROOT / path).read_text()
        assert text.splitlines()[1].strip() == "#    make lock"
        assert text.count("==") <= text.count("--hash=sha256:")


@pytest.mark.parametrize("dockerfile", [SERVICE, NODE], ids=["service", "node"])
def test_image_copies_the_service_packages_but_never_the_simulator_or_tests(dockerfile: pathlib.Path) -> None:
    sources = [source for source, _ in copies(dockerfile)]
    assert not [s for s in sources if re.match(r"(comfyui_sim|tests)(/|$)", s)], sources
    assert SHIPPED <= set(sources)
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert {"comfyui_sim", "tests"} <= set(ignored)


def test_node_image_pins_comfyui_and_storydiffusion_and_installs_headless_opencv_and_omegaconf() -> None:
    text = NODE.read_text()
    for name in ("COMFYUI_COMMIT", "STORYDIFFUSION_COMMIT"):
        pins = set(re.findall(rf"^ARG {name}=(.*)$", text, re.MULTILINE))
        assert len(pins) == 1 and re.fullmatch(r"[0-9a-f]{40}", pins.pop()), name
    assert 'rev-parse HEAD)" = "$2"' in text  # the fetched tree is checked against the pin
    extra = (ROOT / "docker" / "comfyui-requirements.txt").read_text()
    assert re.search(r"^opencv-python-headless==\S+$", extra, re.MULTILINE)
    assert re.search(r"^omegaconf==\S+$", extra, re.MULTILINE)
    assert "-r /opt/comfyui/comfyui-requirements.txt" in text
    # StoryDiffusion's opencv-python line is dropped by the image's grep -vxE, the headless one kept.
    pattern = re.search(r"grep -vxE '([^']+)'", text)
    assert pattern
    dropped = [line for line in ("opencv-python", "opencv-python>=4.8", "opencv-python-headless", "omegaconf")
               if re.fullmatch(pattern.group(1), line)]
    assert dropped == ["opencv-python", "opencv-python>=4.8"]


def test_node_image_keeps_models_on_a_volume() -> None:
    text = NODE.read_text()
    assert not re.search(r"\.(safetensors|ckpt|pt|pth|bin|gguf)\b", " ".join(s for s, _ in copies(NODE)))
    assert re.search(r'^VOLUME \[.*"/models"', text, re.MULTILINE)
    assert "base_path: /models" in (ROOT / "docker" / "extra_model_paths.yaml").read_text()
    assert ("docker/extra_model_paths.yaml", "/opt/comfyui/ComfyUI/extra_model_paths.yaml") in copies(NODE)


@pytest.mark.parametrize(("dockerfile", "probe"), [(SERVICE, "/healthz"), (NODE, "/system_stats")],
                         ids=["service", "node"])
def test_image_runs_as_non_root_with_a_healthcheck(dockerfile: pathlib.Path, probe: str) -> None:
    final = stages(dockerfile)[-1]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users and re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", users[-1])
    checks = [rest for keyword, rest in final if keyword == "HEALTHCHECK"]
    assert len(checks) == 1 and probe in checks[0] and "healthcheck.py" in checks[0]


def build_service_wheel(tmp_path: pathlib.Path) -> pathlib.Path:
    """The wheel as the image's wheel stage builds it: from exactly the files its COPY lines copy."""
    tree, script = tmp_path / "src", None
    tree.mkdir()
    for keyword, rest in stages(SERVICE)[0]:
        *sources, dest = shlex.split(rest) if keyword == "COPY" else ["", ""]
        for source in sources:
            if dest.startswith("/"):  # the build script itself, outside the WORKDIR
                script = ROOT / source
            else:
                subprocess.run(["cp", "-r", str(ROOT / source), str(tree / dest)], check=True)
    assert script is not None and not (tree / "comfyui_sim").exists()
    subprocess.run([sys.executable, str(script), str(tree), str(tmp_path / "wheels"), "--no-build-isolation",
                    "-q"], check=True, capture_output=True)
    return next((tmp_path / "wheels").glob("comfy_service-*.whl"))


def test_service_wheel_runs_every_role_without_the_simulator(tmp_path: pathlib.Path) -> None:
    # Given the wheel the image builds, installed alone beside the locked dependencies
    wheel = build_service_wheel(tmp_path)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(tmp_path / "site"), str(wheel)], check=True)
    entry_points = next((tmp_path / "site").glob("comfy_service-*.dist-info/entry_points.txt")).read_text()
    assert "comfy-service = comfy_service.cli:main" in entry_points
    # When each role's module is imported, with site processing (and so this checkout's editable
    # install) off and only the wheel and the venv's libraries on the path
    probe = (
        "import importlib, sys\n"
        "for name in ('gateway.app', 'gateway.main', 'actors.worker_main', 'node_sidecar.main'):\n"
        "    importlib.import_module(name)\n"
        "from comfy_service.cli import main\n"
        "assert main(['--help']) == 0\n"
        "try:\n"
        "    import comfyui_sim\n"
        "except ModuleNotFoundError:\n"
        "    print('no simulator')\n"
    )
    path = os.pathsep.join([str(tmp_path / "site"), sysconfig.get_paths()["purelib"],
                            sysconfig.get_paths()["platlib"]])
    result = subprocess.run([sys.executable, "-S", "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": path}, timeout=60)
    # Then all import, the CLI answers, and the simulator is absent
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("no simulator")
    assert "gateway" in result.stdout


def test_wheel_builder_refuses_a_tree_holding_the_simulator(tmp_path: pathlib.Path) -> None:
    (tmp_path / "comfyui_sim").mkdir()
    result = subprocess.run([sys.executable, str(ROOT / "docker" / "build_wheel.py"), str(tmp_path),
                             str(tmp_path / "wheels")], capture_output=True, text=True)
    assert result.returncode != 0 and "comfyui_sim" in result.stderr


FAKE_COMFYUI = """
import os, pathlib, signal, sys, time
args = sys.argv[1:]
port = args[args.index("--port") + 1]
log = pathlib.Path(os.environ["FAKE_LOG"])
def stop(*_):
    (log / f"{port}.term").write_text("")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
(log / f"{port}.args").write_text(" ".join(args))
if os.environ.get("FAKE_CRASH_PORT") == port:
    # crash once every instance is up (and handles SIGTERM)
    while len(list(log.glob("*.args"))) < int(os.environ["INSTANCES_PER_GPU"]):
        time.sleep(0.05)
    sys.exit(3)
while True:
    time.sleep(0.05)
"""


@pytest.fixture()
def fake_comfyui(tmp_path: pathlib.Path) -> Iterator[dict[str, str]]:
    (tmp_path / "ComfyUI").mkdir()
    (tmp_path / "ComfyUI" / "main.py").write_text(FAKE_COMFYUI)
    (tmp_path / "log").mkdir()
    yield {**os.environ, "COMFYUI_DIR": str(tmp_path / "ComfyUI"), "COMFYUI_PYTHON": sys.executable,
           "DATA_DIR": str(tmp_path / "data"), "FAKE_LOG": str(tmp_path / "log"), "LISTEN_ADDR": "127.0.0.1"}


def wait_for(condition: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_entrypoint_starts_instances_on_consecutive_ports_and_forwards_sigterm(
        fake_comfyui: dict[str, str], tmp_path: pathlib.Path) -> None:
    # Given the entry point with three instances from port 9100
    env = {**fake_comfyui, "INSTANCES_PER_GPU": "3", "BASE_PORT": "9100", "COMFYUI_ARGS": "--lowvram"}
    process = subprocess.Popen([str(ENTRYPOINT)], env=env)
    log = tmp_path / "log"
    wait_for(lambda: len(list(log.glob("*.args"))) == 3)
    # When it gets SIGTERM
    process.send_signal(signal.SIGTERM)
    # Then every instance got it and had exited before the entry point exits 0
    assert process.wait(timeout=15) == 0
    assert sorted(p.name for p in log.glob("*.term")) == ["9100.term", "9101.term", "9102.term"]
    args = (log / "9101.args").read_text().split()
    assert args[args.index("--listen") + 1] == "127.0.0.1" and args[-1] == "--lowvram"
    assert args[args.index("--temp-directory") + 1] == str(tmp_path / "data" / "comfyui-9101" / "temp")


def test_entrypoint_takes_nomads_ports_and_writes_the_assigned_gpu_down(
        fake_comfyui: dict[str, str], tmp_path: pathlib.Path) -> None:
    # Given Nomad's dynamic ports (not consecutive) and the GPU it assigned the task
    env = {**fake_comfyui, "COMFYUI_PORTS": "23011,27450", "NVIDIA_VISIBLE_DEVICES": "GPU-1f2e",
           "GPU_UUID_FILE": str(tmp_path / "gpu-uuid")}
    process = subprocess.Popen([str(ENTRYPOINT)], env=env)
    log = tmp_path / "log"
    # Then one instance listens on each port, and the sidecar can read which GPU this is
    wait_for(lambda: len(list(log.glob("*.args"))) == 2)
    assert sorted(p.name for p in log.glob("*.args")) == ["23011.args", "27450.args"]
    assert (tmp_path / "gpu-uuid").read_text() == "GPU-1f2e\n"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0


def test_entrypoint_stops_the_group_and_fails_when_one_instance_dies(
        fake_comfyui: dict[str, str], tmp_path: pathlib.Path) -> None:
    env = {**fake_comfyui, "INSTANCES_PER_GPU": "2", "BASE_PORT": "9200", "FAKE_CRASH_PORT": "9201"}
    result = subprocess.run([str(ENTRYPOINT)], env=env, timeout=15, capture_output=True, text=True)
    assert result.returncode == 3, result.stderr
    assert [p.name for p in (tmp_path / "log").glob("*.term")] == ["9200.term"]


@pytest.mark.parametrize("bad", [{"INSTANCES_PER_GPU": "0"}, {"BASE_PORT": "http"},
                                 {"BASE_PORT": "65535", "INSTANCES_PER_GPU": "2"},
                                 {"COMFYUI_PORTS": "23011,http"}])
def test_entrypoint_refuses_bad_settings(fake_comfyui: dict[str, str], bad: dict[str, str]) -> None:
    result = subprocess.run([str(ENTRYPOINT)], env={**fake_comfyui, **bad}, timeout=15, capture_output=True)
    assert result.returncode == 64


def test_entrypoint_runs_a_given_command_instead() -> None:
    result = subprocess.run([str(ENTRYPOINT), "echo", "sidecar"], capture_output=True, text=True, timeout=15)
    assert (result.returncode, result.stdout) == (0, "sidecar\n")


class Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200 if self.path == "/healthz" else 500)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(("url", "code"), [("http://127.0.0.1:${PROBE_PORT}/healthz", 0),
                                           ("http://127.0.0.1:${PROBE_PORT}/broken", 1),
                                           ("http://127.0.0.1:${UNSET_PORT}/healthz", 1)])
def test_healthcheck_passes_only_on_a_2xx_answer(url: str, code: int) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        environ = {k: v for k, v in os.environ.items() if k != "UNSET_PORT"}
        result = subprocess.run([sys.executable, str(ROOT / "docker" / "healthcheck.py"), url], timeout=15,
                                env={**environ, "PROBE_PORT": str(server.server_port)}, capture_output=True)
        assert result.returncode == code, result.stderr
    finally:
        server.shutdown()
        server.server_close()
