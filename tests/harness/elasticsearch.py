"""An Elasticsearch-API server of the tests' own: noida-db with only its search service.

The ``noida-db`` console script is a Python wrapper that runs the server binary as a child and
does not pass SIGTERM on, so we start the binary inside the wheel ourselves: the PID we stop
is then the server's.

A separate process and data dir from the Kafka one (tests/harness/kafka.py), so either can
be restarted or stopped without touching the other. `NoidaElasticsearch` is also used
directly by tests that need a server they can stop (dependency-down behaviour).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness._util import free_port, start, stop_process, unavailable, wait_for_port


def noida_binary() -> str | None:
    """The server binary shipped in the noida-db wheel."""
    spec = importlib.util.find_spec("noida_db")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "noida-db"
    return str(binary) if binary.is_file() else None


class NoidaElasticsearch:
    """One ``noida-db start --only elasticsearch`` process on a port, data in a temp dir."""

    def __init__(self, port: int | None = None, data_dir: Path | None = None) -> None:
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="changefeed-es-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> NoidaElasticsearch:
        binary = noida_binary()
        if binary is None:
            unavailable("noida-db not installed (pip install noida-db==0.2.3)")
        assert binary is not None
        self.proc = start(
            [
                binary,
                "start",
                "--data-dir",
                str(self.data_dir),
                "--only",
                "elasticsearch",
                "--elasticsearch-port",
                str(self.port),
            ],
            str(self.data_dir / "server.log"),
        )
        try:
            wait_for_port(self.port, timeout=30, proc=self.proc)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


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
