"""The tier rule and its guard (tests/tiers.py), run on small test files in a pytest session
inside this one: which tier each test lands in, and that a unit test reaching for a process,
a port or a server fixture fails even when it swallows the error."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests import tiers

pytest_plugins = ["pytester"]

PLUGINS = ("-p", "tests.tiers", "-p", "no:benchmark", "-p", "no:hypothesispytest")
"""The plugin under test, without plugins of the environment that the inner sessions need
not load: pytest-benchmark asks git for the project's name as a session starts (which the
guard of this unit test would refuse), hypothesis takes a second per session."""

CONFTEST = """
import pytest

@pytest.fixture(scope="session")
def postgres_server():
    return "a stand-in, never a server"

@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request):
    if request.param == "sqlite":
        return "sqlite://"
    return request.getfixturevalue("postgres_server")
"""


@pytest.fixture
def session(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester with the conftest above; its sessions load the tier plugin."""
    pytester.makeconftest(CONFTEST)
    return pytester


@contextmanager
def inner_session() -> Iterator[None]:
    """Around a session run inside this test: it shares the plugin module, so this test's
    guard is put back afterwards, with nothing refused on its account."""
    active = tiers._Guard.active
    try:
        yield
    finally:
        tiers._Guard.active = active
        tiers._Guard.refused.clear()


def tiers_of(pytester: pytest.Pytester, source: str) -> dict[str, set[str]]:
    """The tier markers each test of `source` gets."""
    pytester.makepyfile(test_tiered=source)
    with inner_session():
        items, _ = pytester.inline_genitems(*PLUGINS)
    names = {"unit", "integration", "slow"}
    return {item.name: {m.name for m in item.iter_markers()} & names for item in items}


def test_the_rule_sorts_tests_by_what_they_use(session: pytest.Pytester) -> None:
    got = tiers_of(
        session,
        """
import subprocess
import pytest

def spawn():
    subprocess.run(["true"])

def test_plain():
    assert True

def test_sqlite_or_server(db_url):
    assert db_url

def test_server_fixture(postgres_server):
    assert postgres_server

def test_helper_spawns():
    spawn()

@pytest.mark.slow
def test_marked_by_hand():
    assert True
""",
    )
    # Every integration test carries the old name too, so -m "not slow", -m "not
    # integration" and -m unit all select the same tests.
    unit, integration = {"unit"}, {"integration", "slow"}
    assert got == {
        "test_plain": unit,
        "test_sqlite_or_server[sqlite]": unit,
        "test_sqlite_or_server[postgresql]": integration,
        "test_server_fixture": integration,
        "test_helper_spawns": integration,
        "test_marked_by_hand": integration,
    }


def test_a_unit_test_that_swallows_the_guards_error_still_fails(
    session: pytest.Pytester,
) -> None:
    session.makepyfile(
        test_sneaky="""
import os
import socket
import sys
from subprocess import run as go  # out of the rule's sight: the guard must catch it

def test_process():
    try:
        go([sys.executable, "-c", "pass"])
    except Exception:
        pass

def test_shell():
    try:
        os.system("true")
    except Exception:
        pass

def test_listener():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        try:
            s.listen()
        except Exception:
            pass

def test_server_by_name(request):
    request.getfixturevalue("postgres_server")

def test_nothing_of_the_kind():
    assert sum([1, 2]) == 3
"""
    )
    with inner_session():
        result = session.inline_run(*PLUGINS, "-m", "unit")
    passed, _, failed = result.listoutcomes()
    assert [r.nodeid.split("::")[1] for r in passed] == ["test_nothing_of_the_kind"]
    reasons = {r.nodeid.split("::")[1]: str(r.longrepr) for r in failed}
    assert sorted(reasons) == ["test_listener", "test_process", "test_server_by_name", "test_shell"]
    assert "starting a process in a unit test" in reasons["test_process"]
    assert "starting a shell in a unit test" in reasons["test_shell"]
    assert "listening on a TCP port in a unit test" in reasons["test_listener"]
    assert "the server fixture 'postgres_server'" in reasons["test_server_by_name"]
