"""`make bench BENCH=webhooks`: what a webhook costs a submit, and how soon it is delivered.

Submit: POST /api/v1/generate latency (gateway + Redis, no worker), one request at a time on a
keep-alive connection, plain bodies and webhook bodies interleaved in one run: a webhook to an
address literal (the policy check resolves nothing) and one to a host name (localhost, through
the system resolver), both allowlisted. Delivery: with a worker and a simulated node, the time
from a task's end (its record's finished_at) to its `end` event reaching a receiver on loopback.
Prints Markdown rows.
"""

from __future__ import annotations

import datetime as dt
import json
import pathlib
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors.webhooks import POLL_S  # noqa: E402
from tests.support.processes import wait_until  # noqa: E402
from tests.support.service import Stack, txt2img_body  # noqa: E402
from tests.support.webhook_receiver import Receiver  # noqa: E402

SUBMITS = 200   # per kind
WARMUP = 20
DELIVERIES = 20
HEADER = ("| webhooks | median | p90 | p99 | mean | added (median) |\n"
          "| --- | --- | --- | --- | --- | --- |")


def _ms(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))] * 1000


def _submit_latencies(stack: Stack, kinds: dict[str, Callable[[], dict[str, Any]]]
                      ) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {kind: [] for kind in kinds}
    for round_ in range(WARMUP + SUBMITS):
        for kind, body in kinds.items():
            payload = body()
            started = time.perf_counter()
            answer = stack.http.post("/api/v1/generate", json=payload)
            elapsed = time.perf_counter() - started
            assert answer.status_code == 202, answer.text
            if round_ >= WARMUP:
                found[kind].append(elapsed)
    return found


def bench_submit(root: pathlib.Path) -> list[str]:
    (root / "submit").mkdir(parents=True, exist_ok=True)
    stack = Stack(root / "submit", nodes=0, workers=0,
                  env={"WEBHOOK_ALLOW_HOSTS": "127.0.0.1,localhost", "LOG_LEVEL": "WARNING"})
    try:
        def hooked(host: str) -> Callable[[], dict[str, Any]]:
            return lambda: {**txt2img_body(steps=1),
                            "webhook": {"url": f"http://{host}:9/hook", "events": ["end"]}}
        found = _submit_latencies(stack, {"none": lambda: txt2img_body(steps=1),
                                          "to 127.0.0.1": hooked("127.0.0.1"),
                                          "to localhost": hooked("localhost")})
    finally:
        stack.stop()
    base = statistics.median(found["none"]) * 1000
    rows = []
    for kind, values in found.items():
        median = statistics.median(values) * 1000
        added = "" if kind == "none" else f"{median - base:+.2f} ms"
        rows.append(f"| {kind} ({len(values)} submits) | {median:.2f} ms | {_ms(values, 90):.2f} ms "
                    f"| {_ms(values, 99):.2f} ms | {statistics.mean(values) * 1000:.2f} ms | "
                    f"{added} |")
    return rows


def bench_delivery(root: pathlib.Path) -> list[str]:
    (root / "delivery").mkdir(parents=True, exist_ok=True)
    receiver = Receiver()
    stack = Stack(root / "delivery", nodes=1, step_ms=10, workers=1,
                  env={"WEBHOOK_ALLOW_HOSTS": "127.0.0.1", "LOG_LEVEL": "WARNING"})
    try:
        delays = []
        for i in range(DELIVERIES):
            path = f"/ok/bench-{i}"
            # Not a synchronisation: each task starts at a random phase of the workers' poll
            # (one right after a delivery would always end just after a poll).
            time.sleep(random.uniform(0, POLL_S))
            task_id = stack.submit({**txt2img_body(steps=2),
                                    "webhook": {"url": receiver.url(path), "events": ["end"]}})
            finished = stack.wait_task(task_id)["finished_at"]
            got = wait_until(lambda p=path: receiver.received(p), 30, "the end event")[0]
            assert json.loads(got.body)["type"] == "task.end"
            ended = dt.datetime.fromisoformat(finished.replace("Z", "+00:00")).timestamp()
            delays.append(got.at - ended)
    finally:
        stack.stop()
        receiver.close()
    return [f"| task end to its `end` event received ({DELIVERIES} tasks, 1 worker) | "
            f"{statistics.median(delays) * 1000:.0f} ms | {_ms(delays, 90):.0f} ms | "
            f"{max(delays) * 1000:.0f} ms (max) | {statistics.mean(delays) * 1000:.0f} ms | |"]


def bench_webhooks(root: pathlib.Path) -> list[str]:
    return bench_submit(root) + bench_delivery(root)


if __name__ == "__main__":
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        print(HEADER)
        print("\n".join(bench_webhooks(pathlib.Path(tmp))))
