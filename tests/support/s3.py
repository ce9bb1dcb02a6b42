"""A real S3-compatible object store for tests: versitygw serving a temp directory on loopback."""

from __future__ import annotations

import pathlib
import secrets
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from obstore import sign
from obstore.store import S3Store

from comfy_service.agents.binaries import agent_binary
from comfy_service.polling import wait_until
from tests.support.processes import ManagedProcess, free_port, serving

HEALTH_PATH = "/health"
REGION = "us-east-1"


class S3Server(ManagedProcess):
    """`versitygw posix` on a free loopback port with one bucket, made by an S3 CreateBucket call.

    The posix backend keeps each bucket as a directory under `data_dir / "root"` and each
    object as a file in it, so a test can also look at what was stored. The root
    credentials are random per server; tests share one server and isolate by key prefix.
    """

    def __init__(self, data_dir: pathlib.Path, bucket: str = "comfy-outputs") -> None:
        self.data_dir = data_dir
        self.root = data_dir / "root"
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bucket = bucket
        self.region = REGION
        self.access_key = f"test{secrets.token_hex(8)}"
        self.secret_key = secrets.token_urlsafe(30)
        argv = [agent_binary("versitygw"), "--port", f"127.0.0.1:{self.port}", "--region", REGION,
                "--health", HEALTH_PATH, "--quiet", "posix", str(self.root)]
        # Credentials through the environment, not argv, so `ps` does not show them.
        super().__init__(f"versitygw:{self.port}", argv, data_dir / "versitygw.log",
                         env={"ROOT_ACCESS_KEY_ID": self.access_key,
                              "ROOT_SECRET_ACCESS_KEY": self.secret_key})
        try:
            wait_until(lambda: serving(self, self.endpoint + HEALTH_PATH, "versitygw"), 20,
                       f"versitygw on port {self.port}")
            self._create_bucket()
        except BaseException:
            self.stop()
            raise

    def _create_bucket(self) -> None:
        # obstore signs the bucket's own path ("/<bucket>/") for an empty key, and a PUT
        # there is CreateBucket: the bucket gets its owner and ACL as any S3 client's would.
        url = sign(self.store(), "PUT", "", timedelta(minutes=1))
        answer = httpx.put(url, timeout=10)
        if answer.status_code != 200:
            raise RuntimeError(f"CreateBucket {self.bucket} answered {answer.status_code}: "
                               f"{answer.text}\n{self.log_tail()}")

    def env(self) -> dict[str, str]:
        """The service settings that point an S3 output store at this server."""
        return {"OUTPUT_STORE": "s3", "S3_BUCKET": self.bucket, "S3_PREFIX": "",
                "S3_ENDPOINT": self.endpoint, "S3_REGION": self.region,
                "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def store(self, prefix: str | None = None, secret_key: str | None = None) -> S3Store:
        """An obstore client for the bucket (a test's own view; `secret_key` to forge a bad one)."""
        return S3Store(self.bucket, prefix=prefix, endpoint=self.endpoint, region=self.region,
                       access_key_id=self.access_key,
                       secret_access_key=self.secret_key if secret_key is None else secret_key,
                       virtual_hosted_style_request=False, client_options={"allow_http": True})


def s3_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """Body of a session-scoped `s3_server` fixture: one server, stopped at the end."""
    server = S3Server(tmp_path_factory.mktemp("s3"))
    try:
        yield server
    finally:
        server.stop()
