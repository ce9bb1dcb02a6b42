"""Monitoring for tests: the production configs of monitoring/ made fast, and real Prometheus and
Alertmanager processes on free loopback ports.

The configs are rendered from the files operators deploy (monitoring/prometheus.yml,
monitoring/rules/*.yml, monitoring/alertmanager.yml), changing only what a test must: the
Consul agent, intervals, the Alertmanager and webhook addresses, some `for` durations. The
binaries come from monitoring/tools/prometheus-tools.sh (`make monitoring-tools`), the one lookup.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from comfy_service.polling import wait_until
from tests.support.processes import ROOT, ManagedProcess, free_port, serving

MONITORING = ROOT / "monitoring"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
ALERTMANAGER_CONFIG = MONITORING / "alertmanager.yml"
RULE_FILES = tuple(sorted((MONITORING / "rules").glob("*.yml")))
TOOLS_SCRIPT = MONITORING / "tools" / "prometheus-tools.sh"
TOOL_NAMES = ("prometheus", "promtool", "alertmanager", "amtool")
START_TIMEOUT_S = 30.0


class MonitoringToolNotFound(RuntimeError):
    """A Prometheus or Alertmanager binary is missing: `make monitoring-tools` provides it."""


def tool_binary(name: str, environ: Mapping[str, str] = os.environ) -> str:
    """Path of prometheus, promtool, alertmanager or amtool; never builds or installs one."""
    if name not in TOOL_NAMES:
        raise ValueError(f"unknown monitoring tool {name!r}")
    done = subprocess.run(["bash", str(TOOLS_SCRIPT), "--no-build", name], env=dict(environ),
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    for line in done.stdout.splitlines():
        found, _, path = line.partition(" ")
        if done.returncode == 0 and found == name and path:
            return path
    raise MonitoringToolNotFound(done.stderr.strip() or f"{name}: not found (run make monitoring-tools)")


# --- configs ---------------------------------------------------------------------------------
class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL, descriptions) as literal blocks, so a dumped file reads well."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _dump(data: Any) -> str:
    return str(yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000))


def _load(path: pathlib.Path) -> Any:
    return yaml.safe_load(path.read_text())


def _consul_sd(config: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
    for scrape in config.get("scrape_configs") or []:
        yield from scrape.get("consul_sd_configs") or []
    for manager in (config.get("alerting") or {}).get("alertmanagers") or []:
        yield from manager.get("consul_sd_configs") or []


def render_prometheus_config(consul_addr: str, alertmanager_url: str, scrape_interval: str = "1s",
                             eval_interval: str = "1s", *,
                             rule_files: Sequence[pathlib.Path] = RULE_FILES,
                             self_addr: str | None = None,
                             consul_token_file: pathlib.Path | None = None) -> str:
    """monitoring/prometheus.yml for a test: its Consul agent (checked every scrape_interval),
    intervals, one Alertmanager, absolute rule files. `self_addr` is where this Prometheus listens
    (its own metrics feed ConsulDown); without it the self-scrape job is left out. Without
    `consul_token_file` the Consul requests carry no token (a dev agent has no ACLs)."""
    config = _load(PROMETHEUS_CONFIG)
    config["global"].update(scrape_interval=scrape_interval, scrape_timeout=scrape_interval,
                            evaluation_interval=eval_interval)
    config["rule_files"] = [str(pathlib.Path(p).resolve()) for p in rule_files]
    for sd in _consul_sd(config):
        sd["server"] = consul_addr
        sd["refresh_interval"] = scrape_interval
        sd.pop("authorization", None)
        if consul_token_file is not None:
            sd["authorization"] = {"credentials_file": str(consul_token_file)}
    url = urlsplit(alertmanager_url)
    manager: dict[str, Any] = {"api_version": "v2", "scheme": url.scheme or "http",
                               "static_configs": [{"targets": [url.netloc]}]}
    if url.path.strip("/"):
        manager["path_prefix"] = url.path
    config["alerting"] = {"alertmanagers": [manager]}
    scrapes = []
    for scrape in config["scrape_configs"]:
        if scrape.get("static_configs") and scrape["job_name"] == "prometheus":
            if self_addr is None:
                continue
            scrape["static_configs"] = [{"targets": [self_addr]}]
        scrapes.append(scrape)
    config["scrape_configs"] = scrapes
    return _dump(config)


def fast_rules(path: pathlib.Path, for_overrides: Mapping[str, str], *,
               expr_replace: Mapping[str, str] | None = None) -> str:
    """The rules file with the `for` of the named alerts (every rule of that name) replaced;
    naming an alert the file does not have is an error, so a renamed alert fails loudly.
    `expr_replace` substitutes text in every expression, e.g. {"[15m]": "[30s]"} for windows."""
    rules = _load(path)
    seen: set[str] = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert")
            if name in for_overrides:
                rule["for"] = for_overrides[name]
                seen.add(name)
            for old, new in (expr_replace or {}).items():
                rule["expr"] = rule["expr"].replace(old, new)
    missing = set(for_overrides) - seen
    if missing:
        raise KeyError(f"{path.name} has no alert named {sorted(missing)}")
    return _dump(rules)


def render_alertmanager_config(webhook_url: str, group_wait: str = "1s",
                               group_interval: str = "1s") -> str:
    """monitoring/alertmanager.yml with every receiver posting to `webhook_url` and every route's
    grouping waits shortened (routes, matchers, inhibitions and repeat intervals unchanged)."""
    config = _load(ALERTMANAGER_CONFIG)
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs") or []:
            hook["url"] = webhook_url
    routes = [config["route"]]
    while routes:
        route = routes.pop()
        if route is config["route"] or "group_wait" in route:
            route["group_wait"] = group_wait
        if route is config["route"] or "group_interval" in route:
            route["group_interval"] = group_interval
        routes.extend(route.get("routes") or [])
    return _dump(config)


# --- processes -------------------------------------------------------------------------------
def _config_file(work_dir: pathlib.Path, name: str, config: str | pathlib.Path) -> pathlib.Path:
    """`config` itself when it is a file, else its text written to work_dir/name."""
    work_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(config, pathlib.Path):
        return config
    path = work_dir / name
    path.write_text(config)
    return path


class _Served(ManagedProcess):
    """A Prometheus-family server on 127.0.0.1:port, ready once /-/ready answers 200."""

    what = "server"

    def __init__(self, work_dir: pathlib.Path, argv: list[str], port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        super().__init__(f"{self.what}:{port}", argv, work_dir / f"{self.what}.log")
        try:
            wait_until(lambda: serving(self, f"{self.url}/-/ready", self.what), START_TIMEOUT_S,
                       f"{self.what} on port {port}")
        except BaseException:
            self.stop()
            raise

    def get(self, path: str, **params: str) -> Any:
        """GET a JSON API path of this server with query parameters."""
        answer = httpx.get(self.url + path, params=params, timeout=10)
        answer.raise_for_status()
        return answer.json()


class PrometheusProcess(_Served):
    """`prometheus` with `config` (a file, or its text), its TSDB under `work_dir`; /-/reload
    is enabled."""

    what = "prometheus"

    def __init__(self, work_dir: pathlib.Path, config: str | pathlib.Path,
                 port: int | None = None) -> None:
        self.config_path = _config_file(work_dir, "prometheus.yml", config)
        port = port or free_port()
        argv = [tool_binary("prometheus"), f"--config.file={self.config_path}",
                f"--storage.tsdb.path={work_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle"]
        super().__init__(work_dir, argv, port)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of `expr` now: [{"metric": {...}, "value": [ts, "v"]}, ...]."""
        return list(self.get("/api/v1/query", query=expr)["data"]["result"])

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts: [{"labels", "annotations", "state", ...}, ...]."""
        return list(self.get("/api/v1/alerts")["data"]["alerts"])

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets with their labels, health and last error."""
        return list(self.get("/api/v1/targets", state="active")["data"]["activeTargets"])

    def reload(self) -> None:
        httpx.post(f"{self.url}/-/reload", timeout=10).raise_for_status()


class AlertmanagerProcess(_Served):
    """`alertmanager` with `config` (a file, or its text), its state under `work_dir`,
    clustering off."""

    what = "alertmanager"

    def __init__(self, work_dir: pathlib.Path, config: str | pathlib.Path,
                 port: int | None = None) -> None:
        self.config_path = _config_file(work_dir, "alertmanager.yml", config)
        port = port or free_port()
        argv = [tool_binary("alertmanager"), f"--config.file={self.config_path}",
                f"--storage.path={work_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="]
        super().__init__(work_dir, argv, port)

    def alerts(self, **filters: str) -> list[dict[str, Any]]:
        """Alerts Alertmanager holds (API v2), e.g. alerts(active="true", inhibited="false")."""
        return list(self.get("/api/v2/alerts", **filters))
