"""A Redis server of the tests' own: free port, no persistence, data dir in a temp folder;
and a three-node Redis Cluster of the same servers in cluster mode.

Not the shared server a developer machine may run on 6379: our own process can be stopped
by a test (dependency-down behaviour) and leaves nothing behind.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from changefeed.testing.servers import LocalServer, free_port
from tests.harness._util import unavailable


class RedisServer(LocalServer):
    """One ``redis-server`` process on a port (restartable on the same port); with
    ``cluster``, a node in cluster mode."""

    def __init__(self, cluster: bool = False) -> None:
        super().__init__("changefeed-redis-")
        self.cluster = cluster
        self.bus_port = free_port() if cluster else 0

    @property
    def url(self) -> str:
        return f"redis://{self.address}/0"

    def command(self) -> list[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server not installed (apt-get install redis-server)")
        assert binary is not None
        cmd = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.base),
        ]  # fmt: skip
        if self.cluster:
            # The bus port would default to port + 10000, past 65535 for high free ports.
            cmd += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            cmd += ["--cluster-port", str(self.bus_port)]
        return cmd

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


class RedisCluster:
    """Three cluster-mode nodes, all slots assigned by ``redis-cli --cluster create``."""

    def __init__(self) -> None:
        self.nodes = [RedisServer(cluster=True) for _ in range(3)]

    @property
    def url(self) -> str:
        """Any node's URL: cluster clients discover the others."""
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> RedisCluster:
        cli = shutil.which("redis-cli")
        if cli is None:
            unavailable("redis-cli not installed (apt-get install redis-server)")
        assert cli is not None
        try:
            for node in self.nodes:
                node.start()
            addresses = [node.address for node in self.nodes]
            subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *addresses,
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=timeout,
            )
            self._wait_ok(cli, timeout)
        except Exception:
            self.close()
            raise
        return self

    def _wait_ok(self, cli: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            states = [
                subprocess.run(
                    [cli, "-p", str(node.port), "cluster", "info"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout
                for node in self.nodes
            ]
            if all("cluster_state:ok" in state for state in states):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis cluster not ready after {timeout}s")
            time.sleep(0.1)

    def close(self) -> None:
        for node in self.nodes:
            node.close()


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """URL of a node of the session's three-node Redis Cluster."""
    cluster = RedisCluster().start()
    try:
        yield cluster.url
    finally:
        cluster.close()
