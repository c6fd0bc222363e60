"""Servers for tests and benchmarks: free loopback ports, readiness waits, and noida-db
(a Kafka-protocol broker and Elasticsearch API in one binary, from PyPI).

The noida-db binary inside the wheel is started directly, not its Python wrapper: the wrapper
does not pass SIGTERM on, so stopping it would leave the server running. Every process is
stopped by the PID we started.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

SERVICES = ("kafka", "elasticsearch")


class ServerUnavailableError(RuntimeError):
    """The server's binary is not installed."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Until something listens on 127.0.0.1:port; fails early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"server exited with code {proc.returncode} before listening on {port}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, a process we started."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def noida_binary() -> Path | None:
    """The server binary shipped in the noida-db wheel (None when not installed)."""
    import importlib.util

    spec = importlib.util.find_spec("noida_db")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "noida-db"
    if not path.is_file():
        return None
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


class LocalServer:
    """A server process of our own on a free loopback port, its files in a temp dir (or
    ``base``); restartable on the same port. Subclasses give the `command` and, where
    listening is not yet ready, `wait_ready`."""

    def __init__(self, prefix: str, base: Path | None = None) -> None:
        self._own_base = base is None
        self.base = base or Path(tempfile.mkdtemp(prefix=prefix))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The server's command line (raises when its binary is not installed)."""
        raise NotImplementedError

    def wait_ready(self, timeout: float) -> None:
        """After the port is open: wait until the server answers requests."""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30.0) -> Self:
        if self.running:
            return self
        cmd = self.command()
        with open(self.base / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(self.base)
            )
        try:
            wait_for_port(self.port, timeout, self.proc)
            self.wait_ready(timeout)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_base:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class NoidaServer(LocalServer):
    """One noida-db process serving ``service`` (``kafka`` or ``elasticsearch``) on a free
    port, with its data in a temp dir; restartable on the same port and data."""

    def __init__(self, service: str = "kafka", base: Path | None = None) -> None:
        if service not in SERVICES:
            raise ValueError(f"service must be one of {SERVICES}")
        super().__init__(f"changefeed-{service}-", base)
        self.service = service

    @property
    def kafka_url(self) -> str:
        return f"kafka://{self.address}"

    @property
    def elasticsearch_url(self) -> str:
        return f"http://{self.address}"

    def command(self) -> list[str]:
        binary = noida_binary()
        if binary is None:
            raise ServerUnavailableError("noida-db is not installed (pip install noida-db==0.2.3)")
        return [
            str(binary), "start", "--data-dir", str(self.base / "data"),
            "--only", self.service, f"--{self.service}-port", str(self.port),
        ]  # fmt: skip

    def wait_ready(self, timeout: float) -> None:
        if self.service == "kafka":
            # Listening is not enough: wait until metadata requests are answered.
            from confluent_kafka.admin import AdminClient

            AdminClient({"bootstrap.servers": self.address}).list_topics(timeout=timeout)
