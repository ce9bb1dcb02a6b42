"""Real Consul and Nomad agents for tests.

The agents run as subprocesses bound to 127.0.0.1 on free ports with private
temporary data directories, and the fixtures wait (polling with a deadline) until
they are usable:

* ``consul_agent`` (session scope): ``consul agent -dev``; ready once a leader is
  elected and the agent's own node is in the catalog.
* ``nomad_agent`` (session scope): ``nomad agent -dev`` (server + client) with the
  ``raw_exec`` driver enabled and pointed at ``consul_agent``; ready once a node is
  ``ready`` with a healthy ``raw_exec`` driver.
* ``consul_agent_factory`` / ``nomad_agent_factory`` (function scope): start extra,
  private agents (e.g. one that a test restarts or breaks), all stopped at teardown.

The agents themselves live in comfy_service/agents (``comfy-service up`` runs them too).
Binaries are resolved like ``tools/agents/build.sh`` does: ``$CONSUL_BIN`` /
``$NOMAD_BIN``, then ``consul`` / ``nomad`` on ``PATH``, then
``${XDG_CACHE_HOME:-~/.cache}/comfy-service/bin/<name>-<version>`` for the version
pinned in ``tools/agents/versions.env``. A missing binary fails the test and says to
run ``make agents``.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from comfy_service.agents import consul_agent as _consul_agent_module
from comfy_service.agents import nomad_agent as _nomad_agent_module
from comfy_service.agents.binaries import AgentBinaryNotFound, agent_binary
from comfy_service.agents.consul_agent import ConsulAgent
from comfy_service.agents.nomad_agent import NomadAgent
from comfy_service.agents.process import (
    AgentStartError,
    free_ports,
    managed,
    processes_under,
    short_tmpdir,
)
from comfy_service.polling import wait_until as _wait_until
from tests.support.processes import required_binary

__all__ = [
    "AgentBinaryNotFound",
    "AgentStartError",
    "ConsulAgent",
    "NomadAgent",
    "agent_binary",
    "consul_agent",
    "consul_agent_factory",
    "consul_bin",
    "free_ports",
    "http_json",
    "nomad_agent",
    "nomad_agent_factory",
    "nomad_bin",
    "processes_under",
    "wait_until",
]

# Deadlines. Cold starts on a loaded 2-core CI machine are the slow case.
ConsulAgent.start_timeout = float(os.environ.get("CONSUL_START_TIMEOUT",
                                                 _consul_agent_module.CONSUL_START_TIMEOUT))
NomadAgent.start_timeout = float(os.environ.get("NOMAD_START_TIMEOUT",
                                                _nomad_agent_module.NOMAD_START_TIMEOUT))
KEEP_DIRS = bool(os.environ.get("AGENTS_KEEP_DIRS"))

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.1,
    message: str | Callable[[], str] = "condition not met",
) -> T:
    """Poll ``predicate`` until truthy; exceptions mean "not yet", except ``AgentStartError``
    (the agent died: waiting longer cannot help)."""
    return _wait_until(predicate, timeout, message, interval,
                       transient=lambda exc: not isinstance(exc, AgentStartError))


def http_json(
    method: str, url: str, body: Any = None, timeout: float = 10.0
) -> tuple[int, Any, dict[str, str]]:
    """Tiny stdlib HTTP/JSON client: returns (status, decoded body or None, headers)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status, headers = resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        with exc:
            raw = exc.read()
            status, headers = exc.code, dict(exc.headers)
    try:
        decoded = json.loads(raw) if raw else None
    except ValueError:
        decoded = raw.decode(errors="replace")
    return status, decoded, headers


def _require_binary(name: str) -> str:
    """``agent_binary`` for fixtures: a missing binary fails (never skips) the test."""
    return required_binary(agent_binary, name, AgentBinaryNotFound)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def consul_bin() -> str:
    """Path of the consul binary (fails the test with a `make agents` hint if absent)."""
    return _require_binary("consul")


@pytest.fixture(scope="session")
def nomad_bin() -> str:
    """Path of the nomad binary (fails the test with a `make agents` hint if absent)."""
    return _require_binary("nomad")


@pytest.fixture(scope="session")
def consul_agent() -> Iterator[ConsulAgent]:
    """A Consul dev agent shared by the whole session (don't restart it: use the factory)."""
    binary = _require_binary("consul")
    with managed(ConsulAgent(binary, short_tmpdir("consul-")), KEEP_DIRS) as agent:
        yield agent


@pytest.fixture(scope="session")
def nomad_agent(consul_agent: ConsulAgent) -> Iterator[NomadAgent]:
    """A Nomad dev agent (server + client with raw_exec) registered with ``consul_agent``."""
    binary = _require_binary("nomad")
    agent = NomadAgent(binary, short_tmpdir("nomad-"), consul_http_addr=consul_agent.http_addr)
    with managed(agent, KEEP_DIRS) as started:
        yield started


@pytest.fixture
def consul_agent_factory() -> Iterator[Callable[..., ConsulAgent]]:
    """``start(**kwargs) -> ConsulAgent``: private agents, stopped at teardown."""
    binary = _require_binary("consul")
    with contextlib.ExitStack() as stack:

        def start(**kwargs: Any) -> ConsulAgent:
            agent = ConsulAgent(binary, short_tmpdir("consul-"), **kwargs)
            return stack.enter_context(managed(agent, KEEP_DIRS))

        yield start


@pytest.fixture
def nomad_agent_factory() -> Iterator[Callable[..., NomadAgent]]:
    """``start(**kwargs) -> NomadAgent``: private agents, stopped at teardown."""
    binary = _require_binary("nomad")
    with contextlib.ExitStack() as stack:

        def start(**kwargs: Any) -> NomadAgent:
            agent = NomadAgent(binary, short_tmpdir("nomad-"), **kwargs)
            return stack.enter_context(managed(agent, KEEP_DIRS))

        yield start
