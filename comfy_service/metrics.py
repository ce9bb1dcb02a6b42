"""Prometheus metrics of the gateway and the workers (names from constants.METRIC_PREFIX)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from comfy_service.constants import METRIC_PREFIX as P

REQUESTS = Counter(f"{P}http_requests_total", "HTTP requests by route and status",
                   ["route", "status"])
REQUEST_SECONDS = Histogram(f"{P}http_request_seconds", "HTTP request latency", ["route"],
                            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
TASKS_SUBMITTED = Counter(f"{P}tasks_submitted_total", "Tasks accepted", ["workflow"])
TASKS_FINISHED = Counter(f"{P}tasks_finished_total", "Tasks that ended, by status", ["status"])
SLOTS_IN_USE = Gauge(f"{P}node_slots_in_use", "Tasks bound to a node", ["node"])
NODE_UP = Gauge(f"{P}node_up", "1 while the worker's socket to the node is up", ["node"])
READY_TASKS = Gauge(f"{P}ready_tasks", "Tasks waiting for a free node slot")
