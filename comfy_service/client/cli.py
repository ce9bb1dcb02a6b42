"""The client half of the `comfy-service` command: generate, tasks get|cancel, nodes, workflows.

Where and as whom: COMFY_SERVICE_URL (default http://127.0.0.1:8080, where `make up` serves) and
COMFY_SERVICE_API_KEY or --api-key (never printed). Progress goes to stderr, one line per task
(redrawn in place on a terminal); saved file paths go to stdout. Exit status 1, with the error
code on stderr, when a request is refused or a task does not succeed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any, TextIO

from comfy_service.client.config import ClientConfig
from comfy_service.client.errors import ApiError, ComfyServiceError
from comfy_service.client.models import Progress, Task
from comfy_service.client.sync import Client

BAR_WIDTH = 24


def render(progress: Progress) -> str:
    """One task's progress line: `3f2a9c1d [#########---------------]  38% running`."""
    fraction = min(1.0, max(0.0, progress.fraction or 0.0))
    filled = round(fraction * BAR_WIDTH)
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    where = f" on {progress.node}" if progress.node and progress.status == "running" else ""
    return f"{progress.task_id[:8]} [{bar}] {fraction:4.0%} {progress.status}{where}"


class ProgressLine:
    """Draws one task's progress: in place on a terminal, else a line per status or 10 %."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.live = out.isatty()
        self.shown: tuple[str, int] | None = None

    def __call__(self, progress: Progress) -> None:
        step = (progress.status, int((progress.fraction or 0.0) * 10))
        if self.live:
            self.out.write("\r\x1b[2K" + render(progress))
        elif step != self.shown:
            self.out.write(render(progress) + "\n")
        self.shown = step
        self.out.flush()

    def finish(self) -> None:
        if self.live:
            self.out.write("\n")


def parse_param(text: str) -> tuple[str, Any]:
    """`k=v`: v as JSON when it is (numbers, booleans, lists), else the string."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comfy-service", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    service = argparse.ArgumentParser(add_help=False)
    service.add_argument("--url", help="the service (default: $COMFY_SERVICE_URL or "
                                       "http://127.0.0.1:8080)")
    service.add_argument("--api-key", help="default: $COMFY_SERVICE_API_KEY")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", parents=[service],
                              help="run a workflow, show progress, save outputs")
    gen.add_argument("prompt", nargs="?", help="the prompt parameter")
    gen.add_argument("--workflow", default="txt2img", help="template name (default txt2img)")
    gen.add_argument("--steps", type=int)
    gen.add_argument("--param", action="append", type=parse_param, default=[],
                     metavar="NAME=VALUE", help="a template parameter (repeatable); "
                     "NAME=@FILE uploads FILE and passes its upload ref")
    gen.add_argument("--count", type=int, default=1, help="tasks to submit (default 1)")
    gen.add_argument("--priority", type=int)
    gen.add_argument("--task-timeout", type=float, help="execution time limit (timeout_s)")
    gen.add_argument("--timeout", type=float, help="stop waiting after this many seconds")
    gen.add_argument("--out", default=".", help="directory for the outputs (default .)")
    tasks = commands.add_parser("tasks", parents=[service], help="one task: get or cancel")
    tasks.add_argument("action", choices=["get", "cancel"])
    tasks.add_argument("task_id")
    commands.add_parser("nodes", parents=[service], help="the nodes as the workers see them")
    commands.add_parser("workflows", parents=[service], help="templates and their parameters")
    return parser


def main(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(list(argv))
    config = ClientConfig.from_env(os.environ if environ is None else environ,
                                   api_key=args.api_key, base_url=args.url)
    try:
        with Client(config) as client:
            return run(client, args)
    except ApiError as exc:
        details = f" {json.dumps(exc.details)}" if exc.details else ""
        print(f"error: {exc.code} ({exc.status}): {exc.message}{details}", file=sys.stderr)
    except ComfyServiceError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 1


def run(client: Client, args: argparse.Namespace) -> int:
    if args.command == "generate":
        return generate(client, args)
    if args.command == "tasks":
        task = client.get(args.task_id) if args.action == "get" else client.cancel(args.task_id)
        print(json.dumps(as_json(task), indent=2))
        return 0
    if args.command == "nodes":
        for node in client.nodes():
            print(f"{node.name}\t{'healthy' if node.healthy else 'unhealthy'}\t"
                  f"{node.availability or '-'}\tslots {node.slots_used}/{node.slots}")
        return 0
    for workflow in client.workflows():
        print(f"{workflow.name}\t{', '.join(workflow.params)}")
    return 0


def generate(client: Client, args: argparse.Namespace) -> int:
    params: dict[str, Any] = {}
    for name, value in args.param:
        if isinstance(value, str) and value.startswith("@"):
            value = client.upload(value[1:]).ref
        params[name] = value
    if args.prompt is not None:
        params["prompt"] = args.prompt
    if args.steps is not None:
        params["steps"] = args.steps
    submitted = [client.generate(args.workflow, params, priority=args.priority,
                                 timeout_s=args.task_timeout) for _ in range(args.count)]
    failed = 0
    for task in submitted:
        line = ProgressLine(sys.stderr)
        try:
            done = client.wait(task.task_id, args.timeout, on_progress=line)
        finally:
            line.finish()
        if not done.succeeded:
            failed += 1
            error = done.error
            print(f"error: task {done.task_id} {done.status}: "
                  f"{error.code + ': ' + error.message if error else 'no error given'}",
                  file=sys.stderr)
            continue
        for path in client.download(done, args.out):
            print(path)
    return 1 if failed else 0


def as_json(task: Task) -> dict[str, Any]:
    return asdict(task)
