"""The two tiers of the suite, by rule: the unit tier starts no server, the integration tier
is everything that does.

A test is in the **integration** tier (marked ``integration`` and, under its older name,
``slow``) when it

- uses a server fixture (`SERVER_FIXTURES`, directly or through another fixture),
- runs with a parameter that names a server (`SERVER_PARAMS`: the ``postgresql`` of
  ``db_url`` and its like, the ``kafka`` of ``log_url`` and ``backend_url``), which the
  fixture turns into a server with ``request.getfixturevalue``,
- starts a process or a server of its own (its code, or a test helper it calls, names one
  of `SERVER_NAMES` or a server class of ``changefeed.testing``: so every test that runs
  the CLI through ``tests._cli.cf``),
- sits in a module of `INTEGRATION_MODULES`, or is marked ``slow`` or ``integration`` by hand.

Every other test is marked ``unit``. ``-m unit``, ``-m "not integration"`` and
``-m "not slow"`` select the same tests.

The rule is checked while the tests run, so a test it misses fails with the reason instead of
quietly making the unit tier slow: during a unit test, starting a process (``subprocess``,
``multiprocessing``, ``os.fork``, ``os.system``), listening on a TCP port, or setting up a
server fixture raises `ServerInUnitTestError`, and the test fails even if the code under test
caught it.
"""

from __future__ import annotations

import _posixsubprocess
import os
import socket
import subprocess
from collections.abc import Callable, Generator
from types import CodeType
from typing import Any

import pytest

from changefeed.testing.postgres import PostgresServer
from changefeed.testing.servers import LocalServer

SERVER_FIXTURES = frozenset(
    {
        "postgres_server",  # a PostgreSQL cluster of the session (pg_url, pg_dsn)
        "kafka_broker",  # the Kafka-protocol broker (kafka_url, kafka_bootstrap, kafka_backend)
        "elasticsearch_server",  # the Elasticsearch API (elasticsearch_url, es)
        "couchdb_server",  # pouchdb-server (couchdb_url, couch_db, couchdb_proxy)
        "redis_server",  # Redis (redis_url)
        "redis_cluster_url",  # three Redis servers in cluster mode
        "start_site",  # the dashboard on a port (tests/web/conftest.py)
    }
)
"""Fixtures that start a server; the fixtures built on them are found through the closure."""

SERVER_PARAMS = frozenset({"postgresql", "kafka"})
"""Parameters that a parametrized fixture turns into a server fixture."""

SERVER_NAMES = frozenset(
    {
        "subprocess",  # processes of the test's own
        "multiprocessing",
        "Popen",
        "uvicorn",  # a web server in a thread
        "serve",  # changefeed.metrics.serve: the metrics endpoint on a port
    }
)
"""Names whose use in a test's code, or in the test helpers it calls, means it starts a
process or a server."""

INTEGRATION_MODULES = frozenset(
    {
        "tests/backends/test_kafka.py",  # broker restarts; an unreachable broker's timeouts
        "tests/test_supervisor.py",  # child processes, restarts, signals, a health server
        "tests/sources/test_postgres_cdc.py",  # a PostgreSQL cluster with logical decoding
    }
)
"""Modules whose helpers start servers or processes out of the rule's sight (in a
supervisor's children, in classes of the package)."""

_MARKERS = (
    "unit: starts no server, no process, listens on no port (selected by -m unit)",
    "integration: talks to a real server or starts processes (alias: slow, whose "
    "description is in pyproject.toml; -m 'not slow' is the unit tier)",
)


class ServerInUnitTestError(RuntimeError):
    """A unit test reached for a server or a process: the tier rule missed it."""


def pytest_configure(config: pytest.Config) -> None:
    for line in _MARKERS:
        config.addinivalue_line("markers", line)


def is_integration(item: pytest.Item) -> bool:
    """Whether the tier rule puts `item` in the integration tier (see the module docstring)."""
    if item.get_closest_marker("slow") or item.get_closest_marker("integration"):
        return True
    if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    if callspec is not None and SERVER_PARAMS & {
        p for p in callspec.params.values() if isinstance(p, str)
    }:
        return True
    function = getattr(item, "function", None)
    if function is not None and _starts_server(function, function.__module__, set()):
        return True
    return item.nodeid.split("::")[0] in INTEGRATION_MODULES


def _starts_server(function: Any, home: str, seen: set[int]) -> bool:
    """Whether `function` names one of `SERVER_NAMES` or a server class of
    ``changefeed.testing``, itself, in its nested functions, or in a helper it calls by name
    (a function of the test's module `home` or of the ``tests`` package)."""
    code = getattr(function, "__code__", None)
    if not isinstance(code, CodeType) or id(code) in seen:
        return False
    seen.add(id(code))
    names = _code_names(code)
    if SERVER_NAMES & names:
        return True
    scope = getattr(function, "__globals__", {})
    for name in names:
        found = scope.get(name)
        if isinstance(found, type) and issubclass(found, (LocalServer, PostgresServer)):
            return True
        module = getattr(found, "__module__", None) or ""
        helper = module == home or module.startswith("tests.")
        if helper and callable(found) and _starts_server(found, home, seen):
            return True
    return False


def _code_names(code: CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _code_names(const)
    return names


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if is_integration(item):
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)


class _Guard:
    """While ``active`` (the setup and call of a unit test; not its teardown, where fixtures
    of wider scope that integration tests started may be stopped), what it refuses."""

    active = False
    refused: list[str] = []


def _refuse(what: str) -> None:
    message = (
        f"{what} in a unit test: give it a server fixture or a parameter the tier rule "
        "knows (tests/tiers.py), or mark it slow"
    )
    _Guard.refused.append(message)
    raise ServerInUnitTestError(message)


def _guarded(what: str, original: Callable[..., Any]) -> Callable[..., Any]:
    def guard(*args: Any, **kwargs: Any) -> Any:
        if _Guard.active:
            _refuse(what)
        return original(*args, **kwargs)

    return guard


def _guarded_listen(original: Callable[..., None]) -> Callable[..., None]:
    def listen(self: socket.socket, *args: Any) -> None:
        if _Guard.active and self.family in (socket.AF_INET, socket.AF_INET6):
            _refuse("listening on a TCP port")
        original(self, *args)

    return listen


_PATCHES: list[tuple[Any, str, Callable[[Callable[..., Any]], Callable[..., Any]]]] = [
    (subprocess.Popen, "_execute_child", lambda f: _guarded("starting a process", f)),
    (_posixsubprocess, "fork_exec", lambda f: _guarded("starting a process", f)),
    (os, "posix_spawn", lambda f: _guarded("starting a process", f)),
    (os, "posix_spawnp", lambda f: _guarded("starting a process", f)),
    (os, "fork", lambda f: _guarded("forking a process", f)),
    (os, "system", lambda f: _guarded("starting a shell", f)),
    (socket.socket, "listen", _guarded_listen),
]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Install the guards once (a session run inside a test finds them in place); they act
    only while a unit test is set up and run."""
    for owner, name, wrap in _PATCHES:
        original = getattr(owner, name)
        if not getattr(original, "tier_guard", False):
            guarded = wrap(original)
            guarded.tier_guard = True  # type: ignore[attr-defined]
            setattr(owner, name, guarded)


def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any]) -> None:
    if _Guard.active and fixturedef.argname in SERVER_FIXTURES:
        _refuse(f"the server fixture {fixturedef.argname!r}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    _Guard.active = item.get_closest_marker("unit") is not None
    return (yield from _phase())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    return (yield from _phase())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    _Guard.active = False
    return (yield from _phase())


def _phase() -> Generator[None, None, None]:
    """Run one phase of a test; fail it if the guard refused something that the code under
    test caught (when the phase failed anyway, its own error is the report)."""
    try:
        yield
    finally:
        refused = list(_Guard.refused)
        _Guard.refused.clear()
    if refused:
        pytest.fail(refused[0], pytrace=False)
