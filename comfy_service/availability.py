"""Whether a node takes work (pure): ready, cordoned or draining, and how Consul carries it.

- ready: takes new tasks.
- cordoned: takes no new task; what it holds (running and waiting in ComfyUI's queue) finishes.
- draining: takes no new task; the running prompt finishes, prompts still waiting in ComfyUI's
  queue go back in line at once (they have not started, so moving them loses no work). This is
  also what a stopping allocation does (scale-in, `nomad alloc stop`, node drain, job update).

The state lives in Consul, so every worker and gateway sees the same one and it survives any
restart: an operator's wish is a KV entry under `comfy-service/nodes/<node id>` (written by the
gateway's admin API); the node's sidecar applies it as Consul service maintenance, and the
maintenance reason says which of the two it is. Workers read it from the health answer they
already follow. Maintenance set by hand (`consul maint`) counts as draining.
"""

from __future__ import annotations

import json
import re

READY, CORDONED, DRAINING = "ready", "cordoned", "draining"
STATES = (READY, CORDONED, DRAINING)
# What an operator asks for in POST /api/v1/nodes/{id}/<action>.
ACTIONS = {"cordon": CORDONED, "drain": DRAINING, "uncordon": READY}

KV_PREFIX = "comfy-service/nodes/"
# Consul service ids the sidecars register (node_sidecar/meta.py): letters, digits and '-'.
NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
_REASON_PREFIX = "comfy-service "


def kv_key(node_id: str) -> str:
    return f"{KV_PREFIX}{node_id}"


def wanted_value(state: str, reason: str, at: str) -> bytes:
    """The KV value an operator's request writes."""
    assert state in (CORDONED, DRAINING)
    return json.dumps({"state": state, "reason": reason[:200], "at": at}).encode()


def parse_wanted(value: bytes | str | None) -> str:
    """The state a KV value asks for; anything missing or unreadable means ready."""
    if value is None:
        return READY
    try:
        state = json.loads(value).get("state")
    except (ValueError, AttributeError):
        return READY
    return state if state in (CORDONED, DRAINING) else READY


def maintenance_reason(state: str, why: str) -> str:
    """The reason given to Consul's maintenance mode: the state first, then why."""
    assert state in (CORDONED, DRAINING)
    return f"{_REASON_PREFIX}{state}: {why}"


def state_of_maintenance(notes: str) -> str:
    """Cordoned when our reason says so; any other maintenance (ours or by hand) drains."""
    return CORDONED if notes.startswith(f"{_REASON_PREFIX}{CORDONED}:") else DRAINING

