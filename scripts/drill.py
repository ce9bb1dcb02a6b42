"""`make drill`: the fault drill. The local cluster (Redis with an append-only file, a Consul dev
agent, simulated nodes each with a sidecar, workers, a gateway with API_WORKERS=2) under a
steady stream of tasks while a seeded injector kills, hangs, slows and restarts its parts; then
every accepted task must have ended exactly once. Prints the fault log as it goes and a table.

  .venv/bin/python scripts/drill.py --short              # the preset tests/test_drill.py runs
  .venv/bin/python scripts/drill.py --seed 7 --duration 900 --worker-kills 100
  make drill DRILL_ARGS="--short --seed 3"

Exits 1 when a task was lost, duplicated, left unfinished or failed without a reason code.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.drill import Drill, DrillConfig  # noqa: E402

# option -> DrillConfig field (all integers or floats); unset options keep the preset's value
OPTIONS = {"duration": "duration_s", "warmup": "warmup_s", "settle": "settle_s",
           "stall": "stall_s", "rate": "rate",
           "nodes": "nodes", "workers": "workers", "api_workers": "api_workers",
           "step_ms": "step_ms", "worker_kills": "worker_kills", "node_kills": "node_kills",
           "node_hangs": "node_hangs", "redis_restarts": "redis_restarts",
           "consul_restarts": "consul_restarts", "gateway_kills": "gateway_kills",
           "bursts": "bursts", "burst_size": "burst_size", "failing_nodes": "failing_nodes",
           "slow_nodes": "slow_nodes"}


def parse(argv: list[str]) -> tuple[DrillConfig, pathlib.Path | None]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true",
                        help="the short preset (75 s of faults, a 300-submit burst); "
                             "default: the long one (10 min, 100 worker kills, 10,000 burst)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--redis-term", action="store_true",
                        help="restart Redis with SIGTERM instead of SIGKILL")
    parser.add_argument("--root", type=pathlib.Path,
                        help="where logs and data go (default: a new temp directory, kept)")
    fields = {f.name: f for f in dataclasses.fields(DrillConfig)}
    for option, name in OPTIONS.items():
        kind = float if fields[name].type in ("float", float) else int
        parser.add_argument(f"--{option.replace('_', '-')}", type=kind, dest=name,
                            help=f"DrillConfig.{name}")
    args = parser.parse_args(argv)
    changes = {name: getattr(args, name) for name in OPTIONS.values()
               if getattr(args, name) is not None}
    changes["seed"] = args.seed
    if args.redis_term:
        changes["redis_crash"] = False
    config = DrillConfig.short(**changes) if args.short else DrillConfig.long(**changes)
    return config, args.root


def main(argv: list[str] | None = None) -> int:
    config, root = parse(sys.argv[1:] if argv is None else argv)
    root = root or pathlib.Path(tempfile.mkdtemp(prefix="comfy-drill-"))
    report = Drill(config, root, say=lambda line: print(line, flush=True)).run()
    print(report.table())
    problems = report.problems()
    if problems:
        print(problems)
    print(f"fault log: {root / 'faults.jsonl'}; table: {root / 'report.txt'}; logs: {root}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
