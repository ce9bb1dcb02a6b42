"""Where the Consul, Nomad, versitygw and Nomad Autoscaler binaries are: tools/agents/build.sh's
lookup, the only one.

Order: $CONSUL_BIN / $NOMAD_BIN / $VERSITYGW_BIN / $NOMAD_AUTOSCALER_BIN, then `consul` / `nomad` /
`versitygw` / `nomad-autoscaler` on PATH, then
${XDG_CACHE_HOME:-~/.cache}/comfy-service/bin/<name>-<version> for the version pinned in
tools/agents/versions.env (what `make agents` builds). Python asks the script
(`build.sh --no-build <name>`), so the order and the pins live in one place.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "tools" / "agents" / "build.sh"
LOOKUP_TIMEOUT_S = 30.0


class AgentBinaryNotFound(RuntimeError):
    """No consul/nomad/versitygw/nomad-autoscaler binary could be located."""


def agent_binary(name: str, environ: Mapping[str, str] = os.environ) -> str:
    """Path of the `consul`/`nomad`/`versitygw`/`nomad-autoscaler` binary; never builds one
    (that is `make agents`)."""
    done = subprocess.run(["bash", str(BUILD_SCRIPT), "--no-build", name], env=dict(environ),
                          capture_output=True, text=True, timeout=LOOKUP_TIMEOUT_S,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise AgentBinaryNotFound(done.stderr.strip().removeprefix("[agents] ")
                                  or f"build.sh --no-build {name} exited {done.returncode}")
    for line in done.stdout.splitlines():
        found, _, path = line.partition(" ")
        if found == name and path:
            return path
    raise AgentBinaryNotFound(f"build.sh --no-build {name} named no binary: {done.stdout!r}")
