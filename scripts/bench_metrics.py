"""`make bench BENCH=metrics`: what the gateway's metrics cost on the submit path.

One gateway process, closed loop (wrk, 32 connections, 10 s) on POST /api/v1/generate, run
alternately with the metrics as shipped and with every metric object replaced by a no-op
(this script's `--serve-without-metrics`), twice each, in one run. Prints Markdown rows.
"""

from __future__ import annotations

import pathlib
import statistics
import sys
import tempfile
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class _NoMetric:
    """Takes every call a prometheus-client metric takes and does nothing."""

    def labels(self, *args: Any, **kwargs: Any) -> _NoMetric:
        return self

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def serve_without_metrics() -> int:
    from prometheus_client import Counter, Gauge, Histogram

    from comfy_service import metrics
    for name, value in list(vars(metrics).items()):
        if isinstance(value, Counter | Gauge | Histogram):
            setattr(metrics, name, _NoMetric())
    from gateway.main import main
    return main()


def bench_metrics(root: pathlib.Path) -> list[str]:
    from scripts.bench import _ok, _wrk
    from tests.support.processes import ManagedProcess, RedisProcess, free_port, wait_until
    runs: dict[str, list[float]] = {"with metrics": [], "without metrics": []}
    redis = RedisProcess(root / "redis-metrics")
    try:
        for round_ in range(2):
            for label, argv in (("with metrics", ["-m", "comfy_service.cli", "gateway"]),
                                ("without metrics", [__file__, "--serve-without-metrics"])):
                port = free_port()
                gateway = ManagedProcess("gateway", [sys.executable, *argv],
                                         root / f"gw-{round_}-{label[:4]}.log",
                                         env={"REDIS_URL": redis.url, "API_PORT": str(port),
                                              "LOG_LEVEL": "WARNING", "API_WORKERS": "1"})
                url = f"http://127.0.0.1:{port}"
                try:
                    wait_until(lambda u=url: _ok(f"{u}/healthz"), 30, "gateway")
                    _wrk(url, root, 8, 2)  # warm-up
                    runs[label].append(_wrk(url, root, 32, 10)[0])
                finally:
                    gateway.stop()
    finally:
        redis.stop()
    with_, without = (statistics.mean(runs[k]) for k in ("with metrics", "without metrics"))
    return [f"| {label} | {', '.join(f'{r:.0f}' for r in rates)} /s | "
            f"{statistics.mean(rates):.0f} /s |" for label, rates in runs.items()] + [
        f"| cost of the metrics | | {100 * (1 - with_ / without):.1f} % of the rate |"]


HEADER = ("| one gateway process, wrk closed loop | runs | mean |\n| --- | --- | --- |")

if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-without-metrics"]:
        sys.exit(serve_without_metrics())
    with tempfile.TemporaryDirectory(prefix="cs-bench-metrics-") as tmp:
        print(HEADER)
        print("\n".join(bench_metrics(pathlib.Path(tmp))))
