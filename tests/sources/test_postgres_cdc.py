"""PostgreSQL CDC (wal2json) on the harness's own cluster, published into the embedded log."""

from __future__ import annotations

import random
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
import pytest
from psycopg import sql

from changefeed.backends.base import PublishError
from changefeed.backends.local import SQLiteLog, SQLitePublisher
from changefeed.identifiers import InvalidIdentifierError
from changefeed.lifecycle import StopFlag
from changefeed.sources.postgres_cdc import (
    CDCError,
    CDCTable,
    PostgresCDC,
    check_table,
    create_slot,
    drop_slot,
    libpq_dsn,
    load_config,
    slot_status,
)
from changefeed.sources.postgres_cdc.readers import (
    OpenReader,
    PollingReader,
    SlotReader,
    StreamingReader,
)
from changefeed.testing.postgres import PostgresUnavailableError, TempPostgresCluster
from tests.harness._util import unavailable
from tests.sources._log import cli_command, ids_in_log, kill_while_writing, read_log, run_python

PATIENTS = CDCTable(
    "patients", id_column="id", document_type="patient", domain_column="domain",
    version_column="version",
)  # fmt: skip


@pytest.fixture
def db(pg_dsn: str) -> Iterator[psycopg.Connection]:
    """The application database. The harness cluster runs with ``synchronous_commit=off``,
    whose commits reach logical decoding only once the WAL writer flushed them (up to
    ~0.6 s later), so this database commits synchronously, as PostgreSQL does by default."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET synchronous_commit = on").format(
                sql.Identifier(conn.info.dbname)
            )
        )
        conn.execute("SET synchronous_commit = on")
        conn.execute(
            "CREATE TABLE patients (id text PRIMARY KEY, domain text, version int, name text)"
        )
        conn.execute("CREATE TABLE unrelated (id int PRIMARY KEY, v text)")
        yield conn


@pytest.fixture
def slot(pg_dsn: str, db: psycopg.Connection) -> Iterator[str]:
    """A fresh slot (slots are cluster-wide, so the name is unique), dropped afterwards."""
    name = f"s_{uuid.uuid4().hex[:12]}"
    create_slot(pg_dsn, name)
    yield name
    if slot_status(pg_dsn, name)["exists"]:
        drop_slot(pg_dsn, name)


@pytest.fixture
def log(tmp_path: Path) -> SQLiteLog:
    return SQLiteLog(tmp_path / "log.db")


def drain(
    dsn: str, slot: str, log: SQLiteLog, tables: list[CDCTable] | None = None, **kw: object
) -> int:
    publisher = log.publisher()
    try:
        return PostgresCDC(dsn, slot, tables or [PATIENTS], publisher, **kw).run(forever=False)  # type: ignore[arg-type]
    finally:
        publisher.close()


# -- configuration -------------------------------------------------------------------------


def test_table_specs_and_config_files(tmp_path: Path) -> None:
    t = CDCTable.parse("crm.people:pid:person:tenant")
    assert (t.schema, t.table, t.id_column, t.document_type, t.domain_column) == (
        "crm", "people", "pid", "person", "tenant",
    )  # fmt: skip
    assert CDCTable.parse("people:id:person").schema == "public"
    with pytest.raises(CDCError, match="table:id_column:doc_type"):
        CDCTable.parse("people:id")
    with pytest.raises(InvalidIdentifierError):
        CDCTable.parse("people;drop:id:person")
    with pytest.raises(CDCError, match="invalid replication slot name"):
        PostgresCDC("postgresql://x/y", "Bad-Slot", [t], publisher=None)  # type: ignore[arg-type]

    cfg = tmp_path / "cdc.yaml"
    cfg.write_text(
        "slot: myslot\ntables:\n  - {table: cases, document_type: case, version_column: rev}\n"
    )
    config = load_config(cfg)
    assert config.slot == "myslot"
    assert config.tables[0] == CDCTable("cases", document_type="case", version_column="rev")
    cfg.write_text('{"tables": [{"table": "cases", "colour": "red"}]}')
    with pytest.raises(CDCError, match="unknown table option"):
        load_config(cfg)
    with pytest.raises(CDCError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    assert libpq_dsn("postgresql+psycopg://u@h:1/d") == "postgresql://u@h:1/d"


def test_tables_must_identify_their_rows(pg_dsn: str, db: psycopg.Connection) -> None:
    db.execute("CREATE TABLE nopk (id int, v text)")
    db.execute("CREATE TABLE composite (a int, b int, PRIMARY KEY (a, b))")
    check_table(db, PATIENTS)
    check_table(db, CDCTable("composite", id_column="b"))
    with pytest.raises(CDCError, match="nopk has no primary key"):
        check_table(db, CDCTable("nopk"))
    db.execute("ALTER TABLE nopk REPLICA IDENTITY FULL")
    check_table(db, CDCTable("nopk"))
    db.execute("ALTER TABLE nopk REPLICA IDENTITY NOTHING")
    with pytest.raises(CDCError, match="REPLICA IDENTITY NOTHING"):
        check_table(db, CDCTable("nopk"))
    with pytest.raises(CDCError, match="id column 'name' of public.patients is not in"):
        check_table(db, CDCTable("patients", id_column="name"))
    with pytest.raises(CDCError, match="has no column 'tenant'"):
        check_table(db, CDCTable("patients", domain_column="tenant"))
    with pytest.raises(CDCError, match="public.ghosts does not exist"):
        check_table(db, CDCTable("ghosts"))


@pytest.fixture(scope="module")
def replica_level_server() -> Iterator[TempPostgresCluster]:
    try:
        cluster = TempPostgresCluster(wal_level="replica")
    except PostgresUnavailableError as exc:
        unavailable(str(exc))
        raise
    with cluster:
        yield cluster


def test_server_without_logical_decoding(
    replica_level_server: TempPostgresCluster, log: SQLiteLog
) -> None:
    dsn = replica_level_server.dsn()
    with pytest.raises(CDCError, match="wal_level=replica; CDC needs wal_level=logical"):
        create_slot(dsn, "cdc")
    with pytest.raises(CDCError, match="wal_level=logical"):
        PostgresCDC(dsn, "cdc", [PATIENTS], log.publisher()).check()


def test_missing_slot_is_a_clear_error(pg_dsn: str, db: psycopg.Connection, log: SQLiteLog) -> None:
    with pytest.raises(CDCError, match="'nope' does not exist .*cdc slot create nope"):
        drain(pg_dsn, "nope", log)


# -- row changes to stubs ------------------------------------------------------------------


def test_row_changes_become_stubs(
    pg_dsn: str, db: psycopg.Connection, slot: str, log: SQLiteLog
) -> None:
    db.execute("INSERT INTO patients VALUES ('p1', 'd1', 1, 'a'), ('p2', 'd2', 1, 'b')")
    db.execute("INSERT INTO unrelated VALUES (1, 'ignored')")
    db.execute("UPDATE patients SET name = 'a2', version = 2 WHERE id = 'p1'")
    db.execute("DELETE FROM patients WHERE id = 'p2'")
    db.execute("UPDATE patients SET id = 'p1-renamed', version = 3 WHERE id = 'p1'")
    with db.transaction():
        db.execute("INSERT INTO patients VALUES ('p3', 'd1', 1, 'c')")
        db.execute("INSERT INTO patients VALUES ('p4', 'd1', 1, 'd')")
    with pytest.raises(RuntimeError), db.transaction():
        db.execute("INSERT INTO patients VALUES ('rolled-back', 'd1', 1, 'x')")
        raise RuntimeError("rollback")

    assert drain(pg_dsn, slot, log) == 8
    got = [
        (c.topic, c.id, c.metadata.is_deletion, c.metadata.domain, c.metadata.version)
        for c in read_log(log)
        if c.metadata is not None
    ]
    assert got == [
        ("meta", "p1", False, "d1", 1),
        ("meta", "p2", False, "d2", 1),
        ("meta", "p1", False, "d1", 2),
        ("meta", "p2", True, None, None),  # default replica identity: only the key is known
        ("meta", "p1", True, None, None),  # the id changed: the old document is gone
        ("meta", "p1-renamed", False, "d1", 3),
        ("meta", "p3", False, "d1", 1),
        ("meta", "p4", False, "d1", 1),
    ]
    meta = read_log(log)[0].metadata
    assert meta is not None
    assert (meta.data_source_type, meta.data_source_name, meta.document_type) == (
        "sql", "patients", "patient",
    )  # fmt: skip
    assert drain(pg_dsn, slot, log) == 0  # confirmed: nothing is delivered twice


def test_full_replica_identity_gives_deletions_their_domain(
    pg_dsn: str, db: psycopg.Connection, slot: str, log: SQLiteLog
) -> None:
    db.execute("ALTER TABLE patients REPLICA IDENTITY FULL")
    db.execute("INSERT INTO patients VALUES ('p1', 'd1', 1, 'a')")
    db.execute("DELETE FROM patients")
    drain(pg_dsn, slot, log)
    last = read_log(log)[-1].metadata
    assert last is not None and (last.is_deletion, last.domain, last.version) == (True, "d1", 1)


def test_topics_per_table_or_for_all(
    pg_dsn: str, db: psycopg.Connection, slot: str, log: SQLiteLog
) -> None:
    db.execute("INSERT INTO patients VALUES ('p1', 'd1', 1, 'a')")
    db.execute("INSERT INTO unrelated VALUES (7, 'x')")
    tables = [CDCTable("patients", document_type="case"), CDCTable("unrelated", topic="misc")]
    drain(pg_dsn, slot, log, tables)
    assert {(c.topic, c.id) for c in read_log(log)} == {("case", "p1"), ("misc", "7")}


class FailingPublisher(SQLitePublisher):
    """The log refuses to acknowledge (our own interface, faked for one test)."""

    def flush(self, timeout: float | None = None) -> None:
        raise PublishError("log unavailable")


def test_slot_advances_only_after_the_log_acknowledged(
    pg_dsn: str, db: psycopg.Connection, slot: str, log: SQLiteLog, tmp_path: Path
) -> None:
    db.execute("INSERT INTO patients SELECT 'p' || i, 'd', 1, 'n' FROM generate_series(1, 200) i")
    before = slot_status(pg_dsn, slot)
    assert before["lag_bytes"] > 0 and before["plugin"] == "wal2json"
    failing = FailingPublisher(SQLiteLog(tmp_path / "other.db"))
    with pytest.raises(PublishError):
        PostgresCDC(pg_dsn, slot, [PATIENTS], failing).run(forever=False)
    after_failure = slot_status(pg_dsn, slot)
    assert after_failure["confirmed_flush_lsn"] == before["confirmed_flush_lsn"]
    assert drain(pg_dsn, slot, log) == 200
    caught_up = slot_status(pg_dsn, slot)
    assert caught_up["lag_bytes"] < before["lag_bytes"]
    assert len(set(ids_in_log(log))) == 200


def test_streaming_follows_the_slot_and_confirms(
    pg_dsn: str, db: psycopg.Connection, slot: str, log: SQLiteLog
) -> None:
    publisher = log.publisher()
    cdc = PostgresCDC(pg_dsn, slot, [PATIENTS], publisher, mode="stream")
    runner = threading.Thread(target=cdc.run)
    runner.start()
    try:
        for i in range(50):
            db.execute("INSERT INTO patients VALUES (%s, 'd', 1, 'n')", (f"s{i:02d}",))
        deadline = time.monotonic() + 30
        while len(ids_in_log(log)) < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        cdc.stop()
        runner.join()
        publisher.close()
    assert ids_in_log(log) == [f"s{i:02d}" for i in range(50)]
    assert cdc.stats.published == 50
    assert drain(pg_dsn, slot, log) == 0  # everything published was confirmed


def test_slot_commands(pg_dsn: str, db: psycopg.Connection) -> None:
    name = f"s_{uuid.uuid4().hex[:12]}"
    assert slot_status(pg_dsn, name) == {"slot": name, "exists": False}
    created = create_slot(pg_dsn, name)
    assert created["exists"] and created["active"] is False
    with pytest.raises(CDCError, match="already exists"):
        create_slot(pg_dsn, name)
    drop_slot(pg_dsn, name)
    with pytest.raises(CDCError, match="does not exist"):
        drop_slot(pg_dsn, name)


# -- what CDC is for: crashes lose nothing ----------------------------------------------

APP = """
import os, signal, sys
import psycopg
from changefeed.app import App

dsn, log_url, doc_id = sys.argv[1:]
with psycopg.connect(dsn, autocommit=True) as conn:
    conn.execute("INSERT INTO patients VALUES (%s, 'd1', 1, 'n')", (doc_id,))
# Committed. The process dies before it publishes anything.
os.kill(os.getpid(), signal.SIGKILL)
App(log_url=log_url).publish(ChangeMeta(doc_id, "sql", "patients", document_type="patient"))
"""


def test_app_killed_between_commit_and_publish(
    pg_dsn: str, db: psycopg.Connection, slot: str, log: SQLiteLog
) -> None:
    proc = run_python(APP, pg_dsn, log.url, "committed-then-killed")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert ids_in_log(log) == []  # the app-layer publish never happened
    drain(pg_dsn, slot, log)
    assert ids_in_log(log) == ["committed-then-killed"]  # the WAL had it


CDC_DIES_AFTER_PUBLISH = """
import os, signal, sys
from changefeed.backends.local import SQLiteLog
from changefeed.sources.postgres_cdc import CDCTable, PostgresCDC

dsn, slot, log_path, mode = sys.argv[1:]
publisher = SQLiteLog(log_path).publisher()
flush = publisher.flush

def flush_then_die(timeout=None):
    flush(timeout)
    os.kill(os.getpid(), signal.SIGKILL)  # published, slot not yet advanced

publisher.flush = flush_then_die
cdc = PostgresCDC(dsn, slot, [CDCTable("patients")], publisher, batch_size=1, mode=mode)
cdc.run(forever=mode == "stream")
"""


@pytest.mark.parametrize("mode", ["poll", "stream"])
def test_cdc_killed_between_publish_and_advance(
    pg_dsn: str, db: psycopg.Connection, slot: str, log: SQLiteLog, mode: str
) -> None:
    for i in range(3):
        db.execute("INSERT INTO patients VALUES (%s, 'd', 1, 'n')", (f"d{i}",))
    proc = run_python(CDC_DIES_AFTER_PUBLISH, pg_dsn, slot, str(log.path), mode)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert ids_in_log(log) == ["d0"]
    drain(pg_dsn, slot, log)
    assert ids_in_log(log) == ["d0", "d0", "d1", "d2"]  # re-delivered, none lost, in order


@pytest.mark.slow
def test_cdc_killed_at_random_points_loses_nothing(
    pg_dsn: str, db: psycopg.Connection, slot: str, log: SQLiteLog, tmp_path: Path
) -> None:
    written: list[str] = []
    done = threading.Event()

    def writer() -> None:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            n = 0
            while not done.is_set() or n < 300:
                with conn.transaction():
                    for _ in range(random.randint(1, 5)):
                        conn.execute(
                            "INSERT INTO patients VALUES (%s, 'd', 1, 'n')", (f"w{n:05d}",)
                        )
                        written.append(f"w{n:05d}")
                        n += 1
                time.sleep(0.003)

    config = tmp_path / "cdc.json"
    config.write_text(f'{{"slot": "{slot}", "tables": [{{"table": "patients"}}]}}')
    cmd = cli_command(
        "--log", log.url, "--state", f"sqlite:///{tmp_path / 'state.db'}",
        "cdc", "run", "--db", pg_dsn, "--config", str(config), "--batch-size", "20",
        "--poll-interval", "0.01",
    )  # fmt: skip
    published_by_killed = kill_while_writing(cmd, log, writer, done)

    got = ids_in_log(log)
    assert published_by_killed > 0
    assert set(got) == set(written)
    first_seen = list(dict.fromkeys(got))
    assert first_seen == sorted(first_seen)  # one writer: commit order
    assert slot_status(pg_dsn, slot)["active"] is False


# -- retry decisions by SQLSTATE, and the relay as a registered runnable ----------------------


def test_retry_decisions_use_sqlstate_not_message_text() -> None:
    from changefeed.sources.postgres_cdc import retryable, sqlstate

    # What does not exist needs an operator, whatever the message says (or its language).
    assert not retryable(CDCError("replication slot 's' existiert nicht", sqlstate="42704"))
    assert not retryable(psycopg.errors.UndefinedTable("relation missing"))
    assert not retryable(psycopg.errors.UndefinedObject("no such slot"))
    # A message that merely reads "does not exist" decides nothing.
    assert retryable(CDCError("something does not exist"))
    # Transient: slot briefly in use, server going away, the log down.
    assert retryable(psycopg.errors.ObjectInUse("slot is active"))
    assert retryable(psycopg.OperationalError("server closed the connection"))
    assert retryable(PublishError("log unavailable"))
    assert sqlstate(psycopg.errors.ObjectInUse("x")) == "55006"


def test_a_slot_dropped_under_a_running_relay_ends_it(
    pg_dsn: str, db: psycopg.Connection, slot: str, log: SQLiteLog
) -> None:
    """Retrying cannot bring a slot back: the relay raises instead of backing off forever."""
    publisher = log.publisher()
    cdc = PostgresCDC(pg_dsn, slot, [PATIENTS], publisher, mode="poll", poll_interval=0.02)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            cdc.run()
        except BaseException as exc:  # noqa: BLE001 - inspected below
            errors.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        db.execute("INSERT INTO patients VALUES ('x1', 'd', 1, 'n')")
        deadline = time.monotonic() + 30
        while ids_in_log(log) != ["x1"] and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in range(100):  # between two peeks the slot is not active
            try:
                drop_slot(pg_dsn, slot)
                break
            except CDCError:
                time.sleep(0.01)
        runner.join(30)
    finally:
        cdc.stop()
        runner.join(10)
        publisher.close()
    assert not runner.is_alive()
    (error,) = errors
    assert isinstance(error, CDCError) and error.sqlstate == "42704"
    health = cdc.health()
    assert health.state == "stopped" and health.error is not None and health.processed == 1


def test_cdc_relay_registered_with_the_helper_runs_through_get_runnable(
    pg_dsn: str, db: psycopg.Connection, tmp_path: Path
) -> None:
    from changefeed.app import App
    from changefeed.runner import Runnable, run_runnable
    from changefeed.sources.postgres_cdc import add_cdc_relay

    name = f"s_{uuid.uuid4().hex[:12]}"
    app = App(f"sqlite:///{tmp_path}/log.db", f"sqlite:///{tmp_path}/state.db")
    try:
        assert add_cdc_relay(app, "cdc", pg_dsn, name, [PATIENTS], create_slot=True) == "cdc"
        assert app.replication_slots == [(pg_dsn, name)]  # its lag shows in `status`
        with pytest.raises(CDCError, match="invalid replication slot name"):
            add_cdc_relay(app, "bad", pg_dsn, "Bad-Slot", [PATIENTS])
        relay = app.get_runnable("cdc")
        assert isinstance(relay, PostgresCDC) and isinstance(relay, Runnable)
        assert relay.scalable is False and relay.router is app.router
        assert run_runnable(relay, forever=False) == 0  # bootstrap created the slot
        db.execute("INSERT INTO patients VALUES ('r1', 'd', 1, 'n'), ('r2', 'd', 1, 'n')")
        relay = app.get_runnable("cdc")
        assert run_runnable(relay, forever=False) == 2
        health = relay.health()
        assert (health.kind, health.state, health.processed) == ("cdc-relay", "stopped", 2)
        assert health.detail["slot"] == name and health.detail["last_lsn"] is not None
        assert relay.slot_status()["exists"] is True
        assert ids_in_log(app.backend) == ["r1", "r2"]  # type: ignore[arg-type]
    finally:
        app.close()
        if slot_status(pg_dsn, name)["exists"]:
            drop_slot(pg_dsn, name)


@pytest.mark.parametrize("open_reader", [PollingReader, StreamingReader])
def test_both_readers_keep_one_contract(
    pg_dsn: str, db: psycopg.Connection, slot: str, open_reader: OpenReader
) -> None:
    """Opened alike, read alike: whole transactions and the position to confirm; only a
    poller can say the slot is drained. Confirmed changes are not read again."""
    with db.transaction():
        db.execute("INSERT INTO patients VALUES ('a', 'acme', 1, 'x'), ('b', 'acme', 1, 'y')")
    add_tables = PATIENTS.qualified
    reader: SlotReader = open_reader(libpq_dsn(pg_dsn), slot, add_tables, StopFlag())
    try:
        batch = reader.read(100, wait=30.0)  # returns as soon as the transaction is in
        assert [orjson.loads(r)["action"] for r in batch.rows] == ["B", "I", "I", "C"]
        assert batch.lsn is not None
        assert batch.drained is (reader.mode == "poll")
        reader.confirm(batch.lsn)
    finally:
        reader.close()
    again = PollingReader(libpq_dsn(pg_dsn), slot, add_tables, StopFlag())
    try:
        assert again.read(100, wait=0.0) == ([], None, True)
    finally:
        again.close()
