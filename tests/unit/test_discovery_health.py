"""Consul health entries to nodes: passing take work, maintenance drains, anything else fails."""

from __future__ import annotations

from typing import Any

import pytest

from actors.discovery import health_state, parse_health


def _check(check_id: str, status: str) -> dict[str, str]:
    return {"CheckID": check_id, "Status": status}


@pytest.mark.parametrize("checks,state", [
    ([_check("serfHealth", "passing"), _check("n:http", "passing")], "passing"),
    ([_check("serfHealth", "passing"), _check("_service_maintenance:n", "critical")], "draining"),
    ([_check("_node_maintenance", "critical"), _check("n:http", "passing")], "draining"),
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


def test_parse_health_keeps_passing_and_draining_nodes_and_drops_failed_ones() -> None:
    nodes = parse_health([
        _entry("b", [_check("_service_maintenance:b", "critical")]),
        _entry("a", [_check("a:http", "passing")]),
        _entry("c", [_check("c:alive", "critical")]),
    ])
    assert [(n.name, n.url, n.draining) for n in nodes] == [
        ("a", "http://10.0.0.1:8188", False), ("b", "http://10.0.0.1:8188", True)]
    assert nodes[0].meta == {"slots": "2"}
