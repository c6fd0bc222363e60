"""Engines for PostgreSQL: a pooled connection is pinged only after it idled, and one that
died while idle is replaced before anyone uses it."""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa

from changefeed.db import IDLE_PING_AFTER, make_engine, ping_when_idle


def _counting_pings(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    pings: list[int] = []
    do_ping = engine.dialect.do_ping

    def counted(dbapi_conn: Any) -> bool:
        pings.append(1)
        return do_ping(dbapi_conn)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return pings


def _backend_pid(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


def test_a_connection_used_a_moment_ago_is_not_pinged(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(pg_url)
    pings = _counting_pings(engine, monkeypatch)
    try:
        first = _backend_pid(engine)
        for _ in range(20):
            assert _backend_pid(engine) == first  # the same pooled connection each time
        assert pings == []  # pool_pre_ping would have pinged 20 times
        assert IDLE_PING_AFTER >= 0.5
    finally:
        engine.dispose()


def test_a_connection_that_idled_is_pinged_and_replaced_when_it_died(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = sa.create_engine(pg_url)
    ping_when_idle(engine, idle=0.05)
    pings = _counting_pings(engine, monkeypatch)
    admin = sa.create_engine(pg_url)
    try:
        dead = _backend_pid(engine)
        with admin.connect() as conn:  # a server restart or a firewall, as far as we can tell
            conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": dead})
        time.sleep(0.1)
        fresh = _backend_pid(engine)  # no error: the ping found it dead, the pool reconnected
        assert fresh != dead
        assert len(pings) == 1
        time.sleep(0.1)
        assert _backend_pid(engine) == fresh  # alive after idling: pinged and kept
        assert len(pings) == 2
    finally:
        engine.dispose()
        admin.dispose()


def test_a_connection_that_died_a_moment_after_use_fails_once_as_a_dependency(
    pg_url: str,
) -> None:
    from changefeed.failures import is_dependency_failure

    engine = make_engine(pg_url)
    admin = sa.create_engine(pg_url)
    try:
        dead = _backend_pid(engine)
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": dead})
        with pytest.raises(sa.exc.OperationalError) as failed:
            _backend_pid(engine)  # not pinged (used a moment ago): the statement fails
        assert is_dependency_failure(failed.value)  # the pillow backs off and retries
        assert _backend_pid(engine) != dead  # the pool dropped it: the retry gets a new one
    finally:
        engine.dispose()
        admin.dispose()
