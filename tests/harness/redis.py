"""A Redis server of the tests' own: free port, no persistence, data dir in a temp folder.

Not the shared server a developer machine may run on 6379: our own process can be stopped
by a test (dependency-down behaviour) and leaves nothing behind.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from changefeed.testing.servers import LocalServer
from tests.harness._util import unavailable


class RedisServer(LocalServer):
    """One ``redis-server`` process on a port (restartable on the same port)."""

    def __init__(self) -> None:
        super().__init__("changefeed-redis-")

    @property
    def url(self) -> str:
        return f"redis://{self.address}/0"

    def command(self) -> list[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server not installed (apt-get install redis-server)")
        assert binary is not None
        return [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.base),
        ]  # fmt: skip

    def start(self, timeout: float = 15.0) -> RedisServer:
        return super().start(timeout)


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
