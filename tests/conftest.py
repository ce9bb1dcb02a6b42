"""Shared fixtures: real processes on loopback, started and stopped by the tests themselves."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from tests.support.processes import ROOT, RedisProcess
from tests.support.s3 import s3_server_fixture

SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    if not (SHARED / "comfyui-protocol").is_dir():
        pytest.fail(f"{SHARED} is missing: the tests read the captured ComfyUI transcripts there")
    return SHARED


@pytest.fixture()
def redis_server(tmp_path: pathlib.Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


# A real S3-compatible server (versitygw) for the session; tests keep apart by key prefix.
s3_server = pytest.fixture(scope="session", name="s3_server")(s3_server_fixture)
