"""S3 on loopback for tests: moto's server in this process, and fsspec's s3 filesystem pointed at it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import boto3
import fsspec
import pytest
from conftest import free_port
from moto.server import ThreadedMotoServer


@contextmanager
def s3_server(bucket: str, port: int | None = None) -> Iterator[ThreadedMotoServer]:
    """moto's S3 on 127.0.0.1 with ``bucket``; the fsspec s3 config aims at it (and fails at once, without retries,
    when it is stopped: a test stops it to see what an outage does)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port or free_port(), verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._port}"
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            patch.setenv(name, "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        config = {"endpoint_url": endpoint, "config_kwargs": {"retries": {"max_attempts": 1}}}
        patch.setitem(fsspec.config.conf, "s3", config)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        try:
            yield server
        finally:
            server.stop()
