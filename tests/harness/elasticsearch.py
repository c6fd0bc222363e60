"""An Elasticsearch-API server of the tests' own: noida-db with only its search service.

Started through `changefeed.testing.servers.NoidaServer` (the binary inside the wheel, so
the PID we stop is the server's).

A separate process and data dir from the Kafka one (tests/harness/kafka.py), so either can
be restarted or stopped without touching the other. `NoidaElasticsearch` is also used
directly by tests that need a server they can stop (dependency-down behaviour).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from changefeed.testing.servers import NoidaServer, ServerUnavailableError
from tests.harness._util import unavailable


class NoidaElasticsearch(NoidaServer):
    """The Elasticsearch API of a noida-db process; restartable on the same port and data."""

    def __init__(self, data_dir: Path | None = None) -> None:
        super().__init__("elasticsearch", data_dir)

    @property
    def url(self) -> str:
        return self.elasticsearch_url

    def start(self, timeout: float = 30.0) -> NoidaElasticsearch:
        try:
            super().start(timeout)
        except ServerUnavailableError as exc:
            unavailable(str(exc))
        return self


@pytest.fixture(scope="session")
def elasticsearch_server() -> Iterator[NoidaElasticsearch]:
    server = NoidaElasticsearch().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def elasticsearch_url(elasticsearch_server: NoidaElasticsearch) -> str:
    """Base URL of the session's Elasticsearch-API server."""
    return elasticsearch_server.url


@pytest.fixture
def es_alias() -> str:
    """A fresh alias name, so tests sharing the server never see each other's documents."""
    return f"t{uuid.uuid4().hex[:12]}"
