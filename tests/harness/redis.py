"""A Redis server of the tests' own: free port, no persistence, data dir in a temp folder.

Not the shared server a developer machine may run on 6379: our own process can be stopped
by a test (dependency-down behaviour) and leaves nothing behind.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness._util import free_port, start, stop_process, unavailable, wait_for_port


class RedisServer:
    """One ``redis-server`` process on a port (restartable on the same port)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.data_dir = Path(tempfile.mkdtemp(prefix="changefeed-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server not installed (apt-get install redis-server)")
        assert binary is not None
        cmd = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.data_dir),
        ]  # fmt: skip
        self.proc = start(cmd, str(self.data_dir / "server.log"))
        try:
            wait_for_port(self.port, timeout=15, proc=self.proc)
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
        shutil.rmtree(self.data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session's Redis (database 0)."""
    return redis_server.url
