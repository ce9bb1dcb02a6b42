"""Where the Consul and Nomad binaries are: the one lookup, shared with tools/agents/build.sh.

Order: $CONSUL_BIN / $NOMAD_BIN, then `consul` / `nomad` on PATH, then
${XDG_CACHE_HOME:-~/.cache}/comfy-service/bin/<name>-<version> for the version pinned in
tools/agents/versions.env (what `make agents` builds).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
VERSIONS_FILE = REPO_ROOT / "tools" / "agents" / "versions.env"


class AgentBinaryNotFound(RuntimeError):
    """No consul/nomad binary could be located."""


def pinned_versions() -> dict[str, str]:
    """The KEY=VALUE pins of tools/agents/versions.env."""
    values: dict[str, str] = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        values[key.strip()] = value.strip().strip("\"'")
    return values


def cache_bin_dir(environ: Mapping[str, str] = os.environ) -> Path:
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "comfy-service" / "bin"


def agent_binary(name: str, environ: Mapping[str, str] = os.environ) -> str:
    """Path of the `consul`/`nomad` binary, resolved like tools/agents/build.sh."""
    var = f"{name.upper()}_BIN"
    from_env = environ.get(var)
    if from_env:
        if os.path.isfile(from_env) and os.access(from_env, os.X_OK):
            return from_env
        raise AgentBinaryNotFound(f"${var}={from_env} is not an executable file")
    on_path = shutil.which(name)
    if on_path:
        return on_path
    version = pinned_versions()[f"{name.upper()}_VERSION"]
    cached = cache_bin_dir(environ) / f"{name}-{version}"
    if cached.is_file() and os.access(cached, os.X_OK):
        return str(cached)
    raise AgentBinaryNotFound(
        f"no `{name}` binary: ${var} is unset, none on PATH and {cached} does not exist. "
        "Run `make agents` (bash tools/agents/build.sh) to build the pinned consul/nomad."
    )
