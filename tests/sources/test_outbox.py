"""Transactional outbox on the harness's PostgreSQL, relayed into the embedded SQLite log."""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from changefeed.backends.local import SQLiteLog
from changefeed.change import ChangeMeta
from changefeed.identifiers import InvalidIdentifierError
from changefeed.sources.outbox import (
    Outbox,
    OutboxRelay,
    RelayBusyError,
    outbox_status,
    purge_published,
    write_change,
)
from tests.sources._log import (
    cli_command,
    ids_in_log,
    kill_while_writing,
    read_log,
    run_python,
)

metadata = sa.MetaData()
patients = sa.Table(
    "patients",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("domain", sa.String(64)),
    sa.Column("name", sa.Text),
)


def stub(doc_id: str, doc_type: str = "patient", **kw: object) -> ChangeMeta:
    return ChangeMeta(doc_id, "sql", "patients", document_type=doc_type, domain="d1", **kw)  # type: ignore[arg-type]


@pytest.fixture
def engine(pg_url: str) -> sa.Engine:
    eng = sa.create_engine(pg_url)
    metadata.create_all(eng)
    Outbox().create(eng)
    yield eng  # type: ignore[misc]
    eng.dispose()


@pytest.fixture
def log(tmp_path: Path) -> SQLiteLog:
    return SQLiteLog(tmp_path / "log.db")


def save(conn: sa.Connection, doc_id: str, name: str = "x") -> None:
    """What an application does: change its data, then record the stub, one transaction."""
    conn.execute(patients.insert().values(id=doc_id, domain="d1", name=name))
    write_change(conn, stub(doc_id))


def drain(engine: sa.Engine, log: SQLiteLog, **kw: object) -> int:
    relay = OutboxRelay(engine, log.publisher(), **kw)  # type: ignore[arg-type]
    try:
        return relay.run(forever=False)
    finally:
        relay.publisher.close()


def test_table_and_topic_names_are_validated() -> None:
    with pytest.raises(InvalidIdentifierError):
        Outbox("outbox; drop table x")
    with pytest.raises(InvalidIdentifierError):
        Outbox("ok", schema="bad-schema")
    with pytest.raises(InvalidIdentifierError):
        Outbox().row(stub("a"), topic="no spaces allowed")


def test_stub_commits_and_rolls_back_with_the_data(engine: sa.Engine, log: SQLiteLog) -> None:
    with engine.begin() as conn:
        save(conn, "p1")
    with pytest.raises(RuntimeError), engine.begin() as conn:
        save(conn, "p2")
        raise RuntimeError("application error: rolled back")
    with Session(engine) as session, session.begin():  # ORM sessions work too
        session.execute(patients.insert().values(id="p3", domain="d1", name="y"))
        write_change(session, stub("p3"))

    assert outbox_status(engine).pending == 2
    assert drain(engine, log) == 2
    changes = read_log(log)
    assert [c.id for c in changes] == ["p1", "p3"]
    assert {c.topic for c in changes} == {"meta"}  # "patient" is not a routed type
    meta = changes[0].metadata
    assert meta is not None and meta.domain == "d1" and meta.data_source_name == "patients"
    assert meta.publish_timestamp is not None
    # Published rows are deleted.
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(Outbox().table)).scalar() == 0


def test_routing_by_document_type_or_explicit_topic(engine: sa.Engine, log: SQLiteLog) -> None:
    with engine.begin() as conn:
        write_change(conn, stub("c1", "case"))
        write_change(conn, stub("f1", "form"))
        write_change(conn, stub("x1", "patient"), topic="patients")
    drain(engine, log)
    assert {(c.topic, c.id) for c in read_log(log)} == {
        ("case", "c1"),
        ("form", "f1"),
        ("patients", "x1"),
    }


def test_late_commit_of_a_lower_id_is_not_skipped(engine: sa.Engine, log: SQLiteLog) -> None:
    """Ids are given at insert time: an earlier id committing later must still be relayed."""
    slow = engine.connect()
    slow_tx = slow.begin()
    save(slow, "early-id-late-commit")  # takes the lower id, commits last
    with engine.begin() as conn:
        save(conn, "later-id")
    relay = OutboxRelay(engine, log.publisher())
    try:
        assert relay.relay_once() == 1
        assert ids_in_log(log) == ["later-id"]
        slow_tx.commit()
        slow.close()
        assert relay.relay_once() == 1
    finally:
        relay.close()
    # In commit order, and nothing lost.
    assert ids_in_log(log) == ["later-id", "early-id-late-commit"]


def test_one_documents_writers_stay_in_order(engine: sa.Engine, log: SQLiteLog) -> None:
    """A second writer of the same document waits for the first one's row lock."""
    with engine.begin() as conn:
        save(conn, "doc")
    drain(engine, log)
    first = engine.connect()
    first_tx = first.begin()
    first.execute(patients.update().where(patients.c.id == "doc").values(name="v2"))
    write_change(first, stub("doc", version=2))

    def second_writer() -> None:
        with engine.begin() as conn:
            conn.execute(patients.update().where(patients.c.id == "doc").values(name="v3"))
            write_change(conn, stub("doc", version=3))

    t = threading.Thread(target=second_writer)
    t.start()
    time.sleep(0.3)  # let it block on the row lock (no assertion depends on this timing)
    first_tx.commit()
    first.close()
    t.join()
    drain(engine, log)
    versions = [c.metadata.version for c in read_log(log) if c.metadata is not None]
    assert versions == [None, 2, 3]


def test_mark_mode_keeps_rows_until_purged(engine: sa.Engine, log: SQLiteLog) -> None:
    with engine.begin() as conn:
        save(conn, "a")
        save(conn, "b")
    assert drain(engine, log, delete=False) == 2
    assert drain(engine, log, delete=False) == 0  # marked rows are not relayed again
    st = outbox_status(engine)
    assert (st.pending, st.published_kept) == (0, 2)
    assert purge_published(engine, older_than=3600) == 0
    assert purge_published(engine, older_than=0) == 2
    assert ids_in_log(log) == ["a", "b"]


def test_an_invalid_row_is_flagged_not_dropped(engine: sa.Engine, log: SQLiteLog) -> None:
    t = Outbox().table
    with engine.begin() as conn:
        save(conn, "good1")
        conn.execute(t.insert().values(key="bad", payload='{"document_id": "bad"}'))
        save(conn, "good2")
    assert drain(engine, log) == 2
    assert ids_in_log(log) == ["good1", "good2"]
    st = outbox_status(engine)
    assert (st.pending, st.failed) == (0, 1)
    with engine.connect() as conn:
        error = conn.execute(sa.select(t.c.error).where(t.c.key == "bad")).scalar()
    assert error is not None and "data_source_type" in error


def test_only_one_relay_is_active(engine: sa.Engine, log: SQLiteLog) -> None:
    with engine.begin() as conn:
        save(conn, "a")
    first = OutboxRelay(engine, log.publisher())
    second = OutboxRelay(engine, log.publisher())
    try:
        assert first.relay_once() == 1
        with pytest.raises(RelayBusyError):
            second.relay_once()
        first.close()  # its session ends, so does its lock
        with engine.begin() as conn:
            save(conn, "b")
        assert second.relay_once() == 1
    finally:
        first.close()
        second.close()
    assert ids_in_log(log) == ["a", "b"]


def test_sqlite_application_database(tmp_path: Path, log: SQLiteLog) -> None:
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    metadata.create_all(eng)
    outbox = Outbox("my_outbox")
    outbox.create(eng)
    with eng.begin() as conn:
        conn.execute(patients.insert().values(id="s1", domain="d1", name="x"))
        write_change(conn, stub("s1"), outbox=outbox)
        outbox.write_many(conn, [stub("s2"), ("case", stub("s3", "case"))])
    assert outbox_status(eng, outbox).pending == 3
    assert drain(eng, log, outbox=outbox, delete=False) == 3
    assert ids_in_log(log) == ["s3", "s1", "s2"]  # topics in name order: case, meta
    assert purge_published(eng, 0, outbox) == 3
    eng.dispose()


# -- what the outbox is for: crashes lose nothing -------------------------------------------

APP = """
import os, signal, sys
import sqlalchemy as sa
from changefeed.app import App
from changefeed.change import ChangeMeta
from changefeed.sources.outbox import write_change

db_url, log_url, mode = sys.argv[1:]
engine = sa.create_engine(db_url)
meta = ChangeMeta(f"{mode}-doc", "sql", "patients", document_type="patient")
with engine.begin() as conn:
    conn.execute(sa.text("INSERT INTO patients (id, domain, name) VALUES (:i, 'd1', 'n')"),
                 {"i": meta.document_id})
    if mode == "outbox":
        write_change(conn, meta)
# Committed. The process dies before it publishes anything.
os.kill(os.getpid(), signal.SIGKILL)
App(log_url=log_url).publish(meta)  # app-layer publishing would happen here
"""


def test_app_killed_between_commit_and_publish(engine: sa.Engine, log: SQLiteLog) -> None:
    db_url = engine.url.render_as_string(hide_password=False)
    for mode in ("after-commit", "outbox"):
        proc = run_python(APP, db_url, log.url, mode)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
    with engine.connect() as conn:  # both rows were committed
        assert conn.execute(sa.select(sa.func.count()).select_from(patients)).scalar() == 2
    assert ids_in_log(log) == []
    drain(engine, log)
    # Publishing after commit lost its change; the outbox still had its stub.
    assert ids_in_log(log) == ["outbox-doc"]


RELAY_DIES_AFTER_PUBLISH = """
import os, signal, sys
from changefeed.backends.local import SQLiteLog
from changefeed.sources.outbox import OutboxRelay

db_url, log_path = sys.argv[1:]
publisher = SQLiteLog(log_path).publisher()
flush = publisher.flush

def flush_then_die(timeout=None):
    flush(timeout)
    os.kill(os.getpid(), signal.SIGKILL)  # published, not yet deleted from the outbox

publisher.flush = flush_then_die
OutboxRelay(db_url, publisher, batch_size=3).run(forever=False)
"""


def test_relay_killed_between_publish_and_delete(engine: sa.Engine, log: SQLiteLog) -> None:
    with engine.begin() as conn:
        for i in range(5):
            save(conn, f"d{i}")
    db_url = engine.url.render_as_string(hide_password=False)
    proc = run_python(RELAY_DIES_AFTER_PUBLISH, db_url, str(log.path))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert ids_in_log(log) == ["d0", "d1", "d2"]
    assert outbox_status(engine).pending == 5  # nothing was deleted
    drain(engine, log)
    # The batch is published again (at least once), nothing is lost, first copies in order.
    assert ids_in_log(log) == ["d0", "d1", "d2", "d0", "d1", "d2", "d3", "d4"]


@pytest.mark.slow
def test_relay_killed_at_random_points_loses_nothing(
    engine: sa.Engine, log: SQLiteLog, tmp_path: Path
) -> None:
    db_url = engine.url.render_as_string(hide_password=False)
    written: list[str] = []
    done = threading.Event()

    def writer() -> None:
        n = 0
        while not done.is_set() or n < 300:
            with engine.begin() as conn:
                for _ in range(random.randint(1, 5)):
                    save(conn, f"w{n:05d}")
                    written.append(f"w{n:05d}")
                    n += 1
            time.sleep(0.003)

    relay_cmd = cli_command(
        "--log", log.url, "--state", f"sqlite:///{tmp_path / 'state.db'}",
        "outbox", "relay", "--db", db_url, "--batch-size", "20", "--poll-interval", "0.01",
    )  # fmt: skip
    relayed_by_killed = kill_while_writing(relay_cmd, log, writer, done)

    got = ids_in_log(log)
    assert relayed_by_killed > 0  # the killed relays were at work
    assert set(got) == set(written)
    first_seen = list(dict.fromkeys(got))
    assert first_seen == sorted(first_seen)  # one writer: commit order is id order
    assert outbox_status(engine).pending == 0
