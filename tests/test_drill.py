"""The short fault drill: under worker, node, Redis, Consul and gateway faults and a burst,
every accepted task ends exactly once (`make drill` runs the long one)."""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import pytest

from tests.support.drill import Drill, DrillConfig, Fault, plan_faults


def test_the_fault_plan_follows_from_the_seed_alone() -> None:
    config = DrillConfig.short(seed=5)
    assert plan_faults(config) == plan_faults(DrillConfig.short(seed=5))
    assert plan_faults(config) != plan_faults(DrillConfig.short(seed=6))
    counted = [f for f in plan_faults(config) if f.counted and f.kind != "node_slow"]
    assert len(counted) == (config.worker_kills + config.node_kills + config.node_hangs
                            + config.redis_restarts + config.consul_restarts
                            + config.gateway_kills + config.bursts + config.failing_nodes)
    assert all(0 <= f.at <= config.duration_s for f in plan_faults(config))
    assert not Fault(1.0, "node_hang_end").counted


@pytest.mark.timeout(900)
def test_no_accepted_task_is_lost_or_duplicated_under_faults(tmp_path: pathlib.Path) -> None:
    # Given the cluster under a steady stream, with seeded faults of every kind and a burst
    config = DrillConfig.short(seed=int(os.environ.get("DRILL_SEED", "1")))
    # When the drill runs and settles
    report = Drill(config, tmp_path).run()
    print(report.table())
    if not report.ok:  # keep the evidence: pytest rotates its temp directories away
        kept = pathlib.Path(tempfile.mkdtemp(prefix=f"comfy-drill-failed-seed{config.seed}-"))
        shutil.copytree(tmp_path, kept, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            "*.png", "*.aof", "*.rdb"))
        print(f"logs kept in {kept}")
    # Then every accepted task ended, once, with one set of outputs
    assert report.accepted > 0 and not report.fault_errors, report.problems()
    assert not report.lost and not report.stuck, report.problems()
    assert not report.duplicated and not report.stray_outputs, report.problems()
    assert not report.uncoded, report.problems()
    assert not report.never_accepted, report.problems()
