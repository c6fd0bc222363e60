"""A Kafka-protocol broker of the tests' own: noida-db (PyPI ``noida-db==0.2.3``).

One broker per test session on a free port with its data in a temp dir; tests use unique
topic names. It can be restarted on the same port and data dir (broker-restart tests), and
every fixture use first makes sure it runs, so a test that stopped it cannot break the next.
The binary inside the wheel is started directly (not the Python wrapper) so the PID we stop
is the server's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness._util import free_port, start, stop_process, unavailable, wait_for_port


def noida_binary() -> Path | None:
    try:
        from importlib.resources import files

        path = Path(str(files("noida_db").joinpath("noida-db")))
    except (ImportError, ModuleNotFoundError):
        return None
    if not path.is_file():
        return None
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


class KafkaBroker:
    """A noida-db process serving the Kafka protocol on 127.0.0.1:port."""

    def __init__(self, binary: Path, base: Path) -> None:
        self.binary = binary
        self.base = base
        self.data_dir = base / "data"
        self.log_path = base / "broker.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        cmd = [
            str(self.binary), "start", "--data-dir", str(self.data_dir),
            "--only", "kafka", "--kafka-port", str(self.port),
        ]  # fmt: skip
        self.proc = start(cmd, str(self.log_path), cwd=str(self.base))
        wait_for_port(self.port, timeout=30.0, proc=self.proc)
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Listening is not enough: wait until metadata requests are answered."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        admin.list_topics(timeout=20)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def ensure_running(self) -> None:
        if not self.running:
            self.start()

    def delete_all_topics(self) -> None:
        """Drop every non-internal topic: a clean log, like a fresh SQLite file."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        names = [t for t in admin.list_topics(timeout=20).topics if not t.startswith("__")]
        if names:
            for future in admin.delete_topics(names, operation_timeout=20).values():
                future.result(timeout=30)

    def topic(self, prefix: str = "t") -> str:
        """A topic name no other test uses."""
        return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    binary = noida_binary()
    if binary is None:
        unavailable("noida-db (pip install noida-db==0.2.3) not installed")
    assert binary is not None
    base = Path(tempfile.mkdtemp(prefix="changefeed-kafka-"))
    broker = KafkaBroker(binary, base)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    """``127.0.0.1:PORT`` of a running broker."""
    kafka_broker.ensure_running()
    return kafka_broker.bootstrap


@pytest.fixture
def kafka_url(kafka_broker: KafkaBroker) -> str:
    """``kafka://127.0.0.1:PORT`` of a running broker with no topics (a backend URL for
    `open_backend`), so tests written for a fresh embedded log work unchanged."""
    kafka_broker.ensure_running()
    kafka_broker.delete_all_topics()
    return kafka_broker.url
