"""A real S3-compatible server (moto's server mode) on loopback, for tests that use s3fs.

Fixtures, importable by any test module (or registered once with
`pytest_plugins = ["s3_server"]` in conftest.py):

- s3_server: session-scoped; the endpoint URL of a server started once per test session.
- s3_options: session-scoped; storage_options for steadyscribe/fsspec pointing s3fs at it.
- s3_bucket: a new empty bucket per test, so tests never see each other's objects.

Credentials are dummies passed explicitly, so neither the environment nor ~/.aws is read or changed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    # One access-log line per request would drown any failure report.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_options(s3_server: str) -> dict[str, Any]:
    return {
        "key": "testing",
        "secret": "testing",
        "endpoint_url": s3_server,
        "client_kwargs": {"region_name": "eu-west-1"},
    }


@pytest.fixture
def s3_bucket(s3_options: dict[str, Any]) -> str:
    import s3fs

    name = f"test-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**s3_options).mkdir(name)
    return name
