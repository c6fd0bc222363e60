"""Test configuration: server fixtures live in tests/harness/, one module per server, and are
loaded here as pytest plugins so each can be written and changed on its own.

The ``slow`` marker: ``pytest -m "not slow"`` is the quick inner loop (about a minute); the
full run (``scripts/test``, CI) includes everything. Besides the tests marked by hand (crash
and kill tests, multi-process scaling, the browser), some are slow by rule, marked here so
nobody has to remember: every test that talks to the Kafka-protocol broker (it uses the
broker's fixture or runs with a ``"kafka"`` parameter) or to the Redis Cluster, the CLI
tests that run ``changefeed`` as a subprocess per case (``tests/_cli.py``'s ``cf``), and the
modules listed in ``_SLOW_MODULES``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = sorted(
    f"tests.harness.{p.stem}"
    for p in (Path(__file__).parent / "harness").glob("*.py")
    if not p.stem.startswith("_")
)


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


_SLOW_FIXTURES = frozenset({"kafka_url", "kafka_bootstrap", "kafka_broker", "redis_cluster_url"})
_SLOW_MODULES = frozenset(
    {
        "tests/backends/test_kafka.py",  # the Kafka backend's own tests, broker restarts
        "tests/cli/test_changes.py",  # the CLI in subprocesses, on both logs
        "tests/cli/test_checkpoint_surgery.py",  # ditto, and a pillow running in a thread
        "tests/test_supervisor.py",  # child processes, restarts, signals
        "tests/sources/test_postgres_cdc.py",  # a PostgreSQL cluster with logical decoding
        "tests/cli/test_cdc_cli.py",  # ditto, through the CLI
        "tests/web/test_value_checks.py",  # a dashboard server per case
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        on_kafka = callspec is not None and "kafka" in list(callspec.params.values())
        module = getattr(item, "module", None)
        runs_cli = module is not None and getattr(module, "cf", None) is _subprocess_cf()
        in_slow_module = item.nodeid.split("::")[0] in _SLOW_MODULES
        if fixtures & _SLOW_FIXTURES or on_kafka or runs_cli or in_slow_module:
            item.add_marker(pytest.mark.slow)


def _subprocess_cf() -> object:
    from tests._cli import cf

    return cf
