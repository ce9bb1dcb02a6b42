"""`make bench BENCH=dispatch`: what one dispatch decision costs as the fleet grows, made from
scratch (actors/dispatch.choose_node over every node's view) and by a worker's fleet index
(actors/fleet_index.py: the choice, then the bind and a release counted into it, as a worker
does per task). Pure Python, no servers: N nodes, two per GPU, half of them one task in,
random GPU loads, a backlog of 100. Prints Markdown rows."""

from __future__ import annotations

import pathlib
import random
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HEADER = ("| nodes | one choose_node decision (mean) | decisions per second, one core "
          "| fleet index: choice + bind + release (mean) | per second, one core |\n"
          "| --- | --- | --- | --- | --- |")
SIZES = (16, 64, 256, 1000)


def bench_dispatch(root: pathlib.Path) -> list[str]:
    from dataclasses import replace

    from actors.dispatch import Need, NodeView, choose_node
    from actors.fleet_index import FleetIndex
    rows = []
    for size in SIZES:
        rnd = random.Random(1)
        views = [NodeView(f"n{i}", True, 2, rnd.randint(0, 1), gpu_uuid=f"GPU-{i // 2}",
                          gpu_util=rnd.random() * 100) for i in range(size)]
        reps = max(20, 20_000 // size)
        started = time.perf_counter()
        for _ in range(reps):
            choose_node(views, Need(), waiting=100)
        each = (time.perf_counter() - started) / reps
        index = FleetIndex()
        for view in views:
            index.put(view)
        reps *= 10
        started = time.perf_counter()
        for _ in range(reps):
            chosen = index.choose(Need(), waiting=100)
            assert chosen is not None
            index.put(replace(chosen, used=chosen.used + 1))
            index.put(chosen)
        indexed = (time.perf_counter() - started) / reps
        rows.append(f"| {size} | {each * 1000:.3f} ms | {1 / each:,.0f} "
                    f"| {indexed * 1000:.3f} ms | {1 / indexed:,.0f} |")
    return rows
