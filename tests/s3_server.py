"""S3 on loopback for tests: moto's server in this process, and fsspec's s3 filesystem pointed at it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import boto3
import fsspec
import pytest
from conftest import free_port
from moto.server import ThreadedMotoServer


class MotoS3:
    """moto's S3 server on one port, which a test may stop and start again: its buckets live in this process, so
    they are still there when it is back."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self._server: ThreadedMotoServer | None = None

    def start(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@contextmanager
def s3_server(bucket: str, port: int | None = None) -> Iterator[MotoS3]:
    """moto's S3 on 127.0.0.1 with ``bucket``; the fsspec s3 config aims at it (and fails at once, without retries,
    when it is stopped: a test stops it to see what an outage does)."""
    server = MotoS3(port or free_port())
    server.start()
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            patch.setenv(name, "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        config = {"endpoint_url": server.endpoint, "config_kwargs": {"retries": {"max_attempts": 1}}}
        patch.setitem(fsspec.config.conf, "s3", config)
        boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket=bucket)
        try:
            yield server
        finally:
            server.stop()
