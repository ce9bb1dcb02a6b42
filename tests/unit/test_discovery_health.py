"""Consul health entries to nodes: passing take work, maintenance drains, anything else fails."""

from __future__ import annotations

from typing import Any

import pytest

from actors.discovery import health_state, parse_health
from comfy_service.availability import (
    CORDONED,
    DRAINING,
    maintenance_reason,
    parse_wanted,
    state_of_maintenance,
    wanted_value,
)


def _check(check_id: str, status: str, notes: str = "") -> dict[str, str]:
    return {"CheckID": check_id, "Status": status, "Notes": notes}


CORDON = maintenance_reason(CORDONED, "operator")
DRAIN = maintenance_reason(DRAINING, "the allocation is stopping")


@pytest.mark.parametrize("checks,state", [
    ([_check("serfHealth", "passing"), _check("n:http", "passing")], "ready"),
    ([_check("serfHealth", "passing"), _check("_service_maintenance:n", "critical")], "draining"),
    ([_check("_node_maintenance", "critical"), _check("n:http", "passing")], "draining"),
    ([_check("_service_maintenance:n", "critical", CORDON)], "cordoned"),
    ([_check("_service_maintenance:n", "critical", DRAIN)], "draining"),
    # maintenance set by hand (`consul maint`, no reason of ours) drains
    ([_check("_service_maintenance:n", "critical", "Maintenance mode is enabled")], "draining"),
    # a node cordoned by an operator whose allocation then stops: draining wins
    ([_check("_service_maintenance:n", "critical", CORDON),
      _check("_node_maintenance", "critical", "")], "draining"),
    ([_check("_service_maintenance:n", "critical", CORDON), _check("n:alive", "critical")],
     "failing"),
    ([_check("_service_maintenance:n", "critical"), _check("n:alive", "critical")], "failing"),
    ([_check("n:alive", "critical")], "failing"),
    ([_check("n:http", "warning")], "failing"),
])
def test_health_state(checks: list[dict[str, str]], state: str) -> None:
    assert health_state(checks) == state


def _entry(service_id: str, checks: list[dict[str, str]]) -> dict[str, Any]:
    return {"Node": {"Address": "10.0.0.9"}, "Checks": checks,
            "Service": {"ID": service_id, "Address": "10.0.0.1", "Port": 8188,
                        "Meta": {"slots": "2"}}}


def test_parse_health_keeps_ready_cordoned_and_draining_nodes_and_drops_failed_ones() -> None:
    nodes = parse_health([
        _entry("b", [_check("_service_maintenance:b", "critical")]),
        _entry("a", [_check("a:http", "passing")]),
        _entry("c", [_check("c:alive", "critical")]),
        _entry("d", [_check("_service_maintenance:d", "critical", CORDON)]),
    ])
    assert [(n.name, n.url, n.availability, n.takes_work) for n in nodes] == [
        ("a", "http://10.0.0.1:8188", "ready", True),
        ("b", "http://10.0.0.1:8188", "draining", False),
        ("d", "http://10.0.0.1:8188", "cordoned", False)]
    assert nodes[0].meta == {"slots": "2"}


@pytest.mark.parametrize("value,state", [
    (None, "ready"),
    (wanted_value(CORDONED, "bad fan", "2026-11-30T00:00:00Z"), "cordoned"),
    (wanted_value(DRAINING, "", "2026-11-30T00:00:00Z"), "draining"),
    (b'{"state": "ready"}', "ready"),
    (b'{"state": "gone"}', "ready"),
    (b"not json", "ready"),
    (b"[1, 2]", "ready"),
])
def test_an_operators_wish_in_consul_kv(value: bytes | None, state: str) -> None:
    assert parse_wanted(value) == state


def test_the_maintenance_reason_carries_the_state_and_why() -> None:
    assert state_of_maintenance(maintenance_reason(CORDONED, "bad fan")) == CORDONED
    assert state_of_maintenance(maintenance_reason(DRAINING, "bad fan")) == DRAINING
    assert "bad fan" in maintenance_reason(CORDONED, "bad fan")
