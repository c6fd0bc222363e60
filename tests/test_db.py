"""Engines for PostgreSQL: a pooled connection is pinged only after it idled, and one that
died while idle is replaced before anyone uses it. `create_tables` survives another process
creating the same tables between its check and its create."""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa

from changefeed.db import IDLE_PING_AFTER, create_tables, make_engine, ping_when_idle


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


def _tables() -> tuple[sa.MetaData, sa.Table, sa.Table]:
    metadata = sa.MetaData()
    ours = sa.Table("ours", metadata, sa.Column("id", sa.Integer, primary_key=True))
    theirs = sa.Table("theirs", metadata, sa.Column("id", sa.Integer, primary_key=True))
    return metadata, ours, theirs


def test_tables_created_by_another_process_meanwhile_are_no_error(db_url: str) -> None:
    """The race of two processes starting at once, made certain: the other one creates the
    table after our check found it missing, just before our CREATE TABLE."""
    metadata, ours, _ = _tables()
    engine, other = sa.create_engine(db_url), sa.create_engine(db_url)
    raced: list[str] = []

    @sa.event.listens_for(ours, "before_create")
    def _other_process_first(table: sa.Table, *_: Any, **__: Any) -> None:
        if not raced:
            raced.append(table.name)
            sa.Table(
                table.name, sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True)
            ).create(other)

    try:
        create_tables(engine, metadata)
        assert raced == ["ours"]
        assert {"ours", "theirs"} <= set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
        other.dispose()


def test_only_the_tables_named_are_created(db_url: str) -> None:
    """A user's metadata (an outbox's) may hold tables that are not ours to create."""
    metadata, ours, _ = _tables()
    engine = sa.create_engine(db_url)
    try:
        create_tables(engine, metadata, [ours])
        create_tables(engine, metadata, [ours])  # there already: nothing to do
        assert "theirs" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
