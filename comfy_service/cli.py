"""The `comfy-service` command: one entry point for every process the service runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

CLIENT_COMMANDS = ("generate", "tasks", "nodes", "workflows")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="comfy-service", description=__doc__)
    parser.add_argument("command", choices=["gateway", "worker", "sidecar", "sim", "up",
                                            *CLIENT_COMMANDS],
                        help="gateway: REST API v1; worker: runs tasks on ComfyUI nodes; "
                             "sidecar: one node's health and load in Consul; "
                             "sim: a simulated ComfyUI node; up: the local stack on defaults; "
                             "generate, tasks, nodes, workflows: the API as a client "
                             "(`comfy-service generate --help`)")
    if not args or args[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command in CLIENT_COMMANDS:
        from comfy_service.client.cli import main as client_main
        return client_main(args)
    if command == "sim":
        from comfyui_sim.cli import main as sim_main
        return sim_main(rest)
    if command == "gateway":
        from gateway.main import main as gateway_main
        return gateway_main(rest)
    if command == "worker":
        from actors.worker_main import main as worker_main
        return worker_main(rest)
    if command == "sidecar":
        from node_sidecar.main import main as sidecar_main
        return sidecar_main(rest)
    if command == "up":
        from comfy_service.devstack import main as up_main
        return up_main(rest)
    parser.error(f"unknown command {command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
