"""Prometheus metrics of the gateway and the workers (names from constants.METRIC_PREFIX).

Base units, `_total` counters, bounded labels only: routes, status codes, error codes,
workflow names (templates, or "custom"), node names; never task ids or prompts.

Several processes per role: the gateway's uvicorn processes (API_WORKERS > 1) share one
prometheus-client multiprocess directory (`gateway.main` makes a fresh one at start) and one
scrape adds them up, because they are one service behind one port; workers are independent
processes (separate Nomad allocations, often on other machines), each scraped on its own
metrics port and registered as its own Consul service, and Prometheus adds them up.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from comfy_service.constants import METRIC_PREFIX as P

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Task times: seconds to an hour (SDXL tasks take seconds; StoryDiffusion stories minutes).
TASK_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)

# --- gateway -------------------------------------------------------------------------------
REQUESTS = Counter(f"{P}http_requests_total", "HTTP requests by route and status code",
                   ["route", "status"])
REQUEST_SECONDS = Histogram(f"{P}http_request_duration_seconds",
                            "HTTP request duration by route", ["route"],
                            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
TASKS_ACCEPTED = Counter(f"{P}tasks_accepted_total", "Tasks accepted, by workflow",
                         ["workflow"])
TASKS_REJECTED = Counter(f"{P}tasks_rejected_total",
                         "Generate requests refused, by error code", ["code"])

# --- worker and dispatcher -----------------------------------------------------------------
TASKS_FINISHED = Counter(f"{P}tasks_finished_total",
                         "Tasks that ended, by status, error code (failed only) and workflow",
                         ["status", "code", "workflow"])
QUEUE_WAIT_SECONDS = Histogram(f"{P}task_queue_wait_seconds",
                               "From acceptance to the start of execution", ["workflow"],
                               buckets=TASK_BUCKETS)
RUN_SECONDS = Histogram(f"{P}task_run_seconds", "From the start of execution to the end",
                        ["workflow"], buckets=TASK_BUCKETS)
DURATION_SECONDS = Histogram(f"{P}task_duration_seconds",
                             "From acceptance to the end (end to end), every finished task",
                             ["workflow"], buckets=TASK_BUCKETS)
ATTEMPTS = Counter(f"{P}task_attempts_total", "Binds of a task to a node")
FAILOVERS = Counter(f"{P}task_failovers_total", "Tasks moved off a lost node")
MOVED_BACK = Counter(f"{P}tasks_moved_back_total",
                     "Tasks taken off a draining node before they started, back in line")
REATTACHMENTS = Counter(f"{P}task_reattachments_total",
                        "Tasks adopted after their worker died")
BIND_DECISIONS = Counter(f"{P}bind_decisions_total",
                         "Dispatch decisions: bound, or tasks waiting and no free slot",
                         ["outcome"])
NODE_UP = Gauge(f"{P}node_up", "1 while this worker's socket to the node is up", ["node"])
NODE_HEALTHY = Gauge(f"{P}node_healthy", "1 while the node is in this worker's healthy set",
                     ["node"])
NODES_HEALTHY = Gauge(f"{P}nodes_healthy",
                      "Healthy nodes in the share this worker follows (sum over workers)")
SLOTS_USED = Gauge(f"{P}node_slots_used", "Tasks bound to the node", ["node"])
SLOTS_FREE = Gauge(f"{P}node_slots_free", "Free slots of the node (0 when unhealthy)", ["node"])
NODE_PROGRESS = Counter(f"{P}node_progress_total",
                        "Progress, start and end events of tasks on the node", ["node"])
NODE_SPEED = Gauge(f"{P}node_speed",
                   "Relative speed the dispatcher uses (NODE_WEIGHT, else learned; 1 = typical)",
                   ["node"])
TASKS_WAITING = Gauge(f"{P}tasks_waiting", "Tasks waiting for a node slot (the backlog)")
OLDEST_WAITING_AGE = Gauge(f"{P}oldest_waiting_task_age_seconds",
                           "Age of the oldest task waiting for a node slot (0 when none)")
REDIS_UP = Gauge(f"{P}redis_up", "1 while this worker's Redis round trips work")
# Registered by the Consul watcher on its first answer: with static discovery the series is
# absent (an unlabelled gauge would read 0 from the start and look like Consul down).
CONSUL_UP = Gauge(f"{P}consul_up", "1 while this worker's Consul discovery works",
                  registry=None)


def consul_up(value: int) -> None:
    if not getattr(consul_up, "registered", False):
        REGISTRY.register(CONSUL_UP)
        consul_up.registered = True  # type: ignore[attr-defined]
    CONSUL_UP.set(value)


def exposition() -> tuple[bytes, str]:
    """The metrics page of this process, or of all the gateway's processes when they share
    a multiprocess directory."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
