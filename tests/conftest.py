"""Test configuration: server fixtures live in tests/harness/, one module per server, and are
loaded here as pytest plugins so each can be written and changed on its own.

The suite has two tiers, split by rule in tests/tiers.py (also loaded here): the unit tier
(``pytest -m unit``, or as before ``-m "not slow"``) starts no server and no process; the
integration tier (``-m integration``, alias ``slow``) is every test that uses a server
fixture, a ``postgresql`` or ``kafka`` parameter of the fixtures below, or processes. The
full run (``scripts/test``, CI) runs both.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.tiers",
    *sorted(
        f"tests.harness.{p.stem}"
        for p in (Path(__file__).parent / "harness").glob("*.py")
        if not p.stem.startswith("_")
    ),
]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL on each dialect we keep state and tables in: a fresh SQLite file, or a
    fresh database of the tests' PostgreSQL cluster."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture(params=["sqlite", "kafka"])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A log URL on each backend: a fresh embedded log, or the session's Kafka-protocol
    broker (topic names must then be unique per test). A module that needs topics made on
    first use with several partitions sets ``LOG_PARTITIONS``."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'log.db'}"
    else:
        url = str(request.getfixturevalue("kafka_url"))
    partitions = getattr(request.module, "LOG_PARTITIONS", None)
    if partitions is None:
        return url
    return url + ("&" if "?" in url else "?") + f"partitions={partitions}"
