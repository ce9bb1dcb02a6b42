"""Monitoring end to end: a real Prometheus and Alertmanager against the cluster that
`nomad job run` deploys (MESH=nomad up): targets found through Consul, task counts, the
dashboard's queries, and NodeDown firing, delivered and resolving for a hung node."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.support.monitoring import (
    AlertmanagerProcess,
    PrometheusProcess,
    fast_rules,
    render_alertmanager_config,
    render_prometheus_config,
)
from tests.support.nomad_cluster import Cluster, running_cluster
from tests.support.processes import ROOT, wait_until

MONITORING = ROOT / "monitoring"


class Receiver:
    """The webhook Alertmanager delivers to: every notification it got, in order."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        received = self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = min(int(self.headers.get("content-length", "0")), 1 << 20)
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def alerts(self, name: str, status: str) -> list[dict[str, Any]]:
        return [alert for note in list(self.notifications) for alert in note["alerts"]
                if alert["labels"].get("alertname") == name and alert["status"] == status]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("monitored")
    # The simulated nodes' sidecars report this GPU, so the GPU series exist
    readings = root / "gpu.json"
    readings.write_text(json.dumps({
        "uuid": "GPU-5e0c2a6e-0000-4000-8000-000000000001", "name": "NVIDIA H100 80GB HBM3",
        "index": 0, "utilization_pct": 63.0, "memory_used_mb": 30000.0,
        "memory_total_mb": 81559.0, "temperature_c": 55.0, "power_w": 450.0}))
    yield from running_cluster(root / "run", extra_env={"GPU_READINGS_FILE": str(readings)})


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    webhook = Receiver()
    yield webhook
    webhook.stop()


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory,
                 receiver: Receiver) -> Iterator[AlertmanagerProcess]:
    root = tmp_path_factory.mktemp("alertmanager")
    config = root / "alertmanager.yml"
    config.write_text(render_alertmanager_config(receiver.url))
    process = AlertmanagerProcess(root, config)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, cluster: Cluster,
               alertmanager: AlertmanagerProcess) -> Iterator[PrometheusProcess]:
    root = tmp_path_factory.mktemp("prometheus")
    rules = root / "alerts.yml"
    # NodeDown waits minutes in production; here seconds, so the test sees it fire
    rules.write_text(fast_rules(MONITORING / "rules" / "alerts.yml", {"NodeDown": "5s"}))
    config = root / "prometheus.yml"
    config.write_text(render_prometheus_config(
        cluster.consul.removeprefix("http://"), alertmanager.url, rule_files=[rules]))
    process = PrometheusProcess(root, config)
    yield process
    process.stop()


def query(prometheus: PrometheusProcess, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prometheus.url}/api/v1/query", params={"query": expr}, timeout=10)
    assert answer.status_code == 200, f"{expr}: {answer.text}"
    body = answer.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def scalar(prometheus: PrometheusProcess, expr: str) -> float:
    found = query(prometheus, expr)
    return float(found[0]["value"][1]) if found else 0.0


def targets_by_role(prometheus: PrometheusProcess) -> dict[str, list[str]]:
    active = httpx.get(f"{prometheus.url}/api/v1/targets", timeout=10).json()["data"][
        "activeTargets"]
    roles: dict[str, list[str]] = {}
    for target in active:
        roles.setdefault(target["labels"].get("role", "?"), []).append(target["health"])
    return roles


def test_prometheus_finds_every_part_through_consul_and_scrapes_it(
        prometheus: PrometheusProcess, cluster: Cluster) -> None:
    wait_until(lambda: cluster.settled(2), 90, "two node allocations passing")

    # Then the gateway, the worker and both sidecars are targets, found in Consul, all up
    def all_up() -> dict[str, list[str]] | None:
        roles = targets_by_role(prometheus)
        wanted = {"gateway": 1, "worker": 1, "sidecar": 2}
        ok = all(len(roles.get(role, [])) == n and set(roles[role]) == {"up"}
                 for role, n in wanted.items())
        return roles if ok else None
    wait_until(all_up, 60, "every target up", interval=0.5)
    # And the sidecars' series carry the node and GPU labels of their Consul registration
    sidecars = query(prometheus, 'comfyui_up{role="sidecar"}')
    assert {s["metric"]["node"] for s in sidecars} == {a["node"] for a in cluster.allocs()}
    assert all(s["metric"].get("gpu_uuid") for s in sidecars)


def test_tasks_finished_in_prometheus_match_the_tasks_run(
        prometheus: PrometheusProcess, cluster: Cluster) -> None:
    expr = 'sum(comfy_service_tasks_finished_total{status="succeeded"})'
    before = scalar(prometheus, expr)
    records = cluster.finish(cluster.submit(6, steps=2))
    assert [r["status"] for r in records] == ["succeeded"] * 6
    wait_until(lambda: scalar(prometheus, expr) == before + 6, 30,
               "Prometheus to count the six tasks", interval=0.5)
    # The gateway and the worker are scraped at their own moments: the gateway's last scrape
    # may predate the sixth accept even after the worker's shows the sixth finish.
    accepted = "sum(comfy_service_tasks_accepted_total)"
    timed = "sum(comfy_service_task_duration_seconds_count)"
    wait_until(lambda: scalar(prometheus, accepted) >= 6 and scalar(prometheus, timed) >= 6, 30,
               "Prometheus to count six accepted and six timed tasks", interval=0.5)


def test_every_dashboard_query_runs_and_returns_series(prometheus: PrometheusProcess,
                                                       cluster: Cluster) -> None:
    # Given a refused request and a failed task, besides the successes above
    refused = httpx.post(f"{cluster.gateway}/api/v1/generate", json={"workflow": "nope"},
                         timeout=10)
    assert refused.status_code == 404
    nodes = [f"http://127.0.0.1:{a['port']}" for a in cluster.allocs()]
    for node in nodes:
        httpx.post(f"{node}/sim/faults", json={"fail_next": 1}, timeout=5).raise_for_status()
    try:
        failed = cluster.finish(cluster.submit(1, steps=1))
        assert failed[0]["status"] == "failed", failed
    finally:
        for node in nodes:
            httpx.post(f"{node}/sim/faults", json={"fail_next": 0}, timeout=5)
    dashboard = json.loads((MONITORING / "dashboards" / "comfy-service.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"]
             for target in panel.get("targets", [])]
    assert exprs
    for expr in exprs:
        expr = expr.replace("$__rate_interval", "1m").replace("$__range", "5m")
        wait_until(lambda e=expr: query(prometheus, e), 30, f"series for {expr}",
                   interval=1.0)


def alert_states(prometheus: PrometheusProcess, name: str) -> set[str]:
    alerts = httpx.get(f"{prometheus.url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    return {a["state"] for a in alerts if a["labels"]["alertname"] == name}


def test_a_hung_node_fires_node_down_which_alertmanager_delivers_then_resolves(
        prometheus: PrometheusProcess, receiver: Receiver, cluster: Cluster) -> None:
    allocs = wait_until(lambda: cluster.settled(2), 90, "two node allocations passing")
    hung = f"http://127.0.0.1:{allocs[0]['port']}"
    wait_until(lambda: "up" in set(targets_by_role(prometheus).get("sidecar", [])), 30,
               "the sidecars scraped")
    # When one node's ComfyUI hangs (port open, no answers)
    httpx.post(f"{hung}/sim/faults", json={"hang": True}, timeout=5).raise_for_status()
    try:
        # Then NodeDown goes pending, then firing, and Alertmanager delivers it
        seen: set[str] = set()

        def fired() -> bool:
            seen.update(alert_states(prometheus, "NodeDown"))
            return "firing" in seen
        wait_until(fired, 90, "NodeDown to fire", interval=0.5)
        assert "pending" in seen or receiver.alerts("NodeDown", "firing")
        firing = wait_until(lambda: receiver.alerts("NodeDown", "firing"), 60,
                            "Alertmanager to deliver NodeDown", interval=0.5)
        assert firing[0]["labels"]["node"] == allocs[0]["node"]
        assert firing[0]["annotations"]["runbook_url"].endswith("#nodedown")
    finally:
        httpx.post(f"{hung}/sim/faults", json={"hang": False}, timeout=5)
    # When the node comes back, Then the alert resolves, and Alertmanager says so
    wait_until(lambda: not alert_states(prometheus, "NodeDown"), 90, "NodeDown to clear",
               interval=0.5)
    wait_until(lambda: receiver.alerts("NodeDown", "resolved"), 60,
               "Alertmanager to deliver the resolution", interval=0.5)

