"""``changefeed cdc``: slot create/show/drop, run with table specs or a config file."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from changefeed.backends.local import SQLiteLog
from tests.cli.test_outbox_cli import run
from tests.sources._log import read_log


@pytest.fixture
def db(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        # Synchronous commits reach logical decoding at once (the cluster defaults to off).
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET synchronous_commit = on").format(
                sql.Identifier(conn.info.dbname)
            )
        )
        conn.execute("CREATE TABLE cases (id int PRIMARY KEY, domain text, v text)")
        conn.execute("CREATE TABLE nopk (id int, v text)")
    return pg_dsn


def test_slot_lifecycle_and_run(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # a table row per slot, unwrapped
    slot = f"cli_{uuid.uuid4().hex[:10]}"
    code, out, _ = run(capsys, "cdc", "slot", "create", slot, "--db", db)
    assert code == 0 and f"slot {slot} created" in out
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("INSERT INTO cases VALUES (1, 'd1', 'a'), (2, 'd2', 'b')")
        conn.execute("DELETE FROM cases WHERE id = 2")

    code, out, _ = run(capsys, "cdc", "slot", "show", slot, "--db", db, "--json")
    assert code == 0
    status = json.loads(out)
    assert status["plugin"] == "wal2json" and status["lag_bytes"] > 0
    code, out, _ = run(capsys, "cdc", "slot", "show", "--db", db)
    assert code == 0 and slot in out

    log_url = f"sqlite:///{tmp_path / 'log.db'}"
    code, _, err = run(
        capsys, "--log", log_url, "cdc", "run", "--db", db, "--slot", slot,
        "--table", "cases:id:case:domain", "--once",
    )  # fmt: skip
    assert code == 0 and "3 stubs published" in err, err
    changes = [(c.topic, c.id, c.deleted) for c in read_log(SQLiteLog(tmp_path / "log.db"))]
    assert changes == [("case", "1", False), ("case", "2", False), ("case", "2", True)]

    code, out, _ = run(capsys, "cdc", "slot", "drop", slot, "--db", db)
    assert code == 0 and "dropped" in out


def test_run_with_config_file_creates_the_slot(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path
) -> None:
    slot = f"cli_{uuid.uuid4().hex[:10]}"
    config = tmp_path / "cdc.yaml"
    config.write_text(f"slot: {slot}\ntables:\n  - table: cases\n    document_type: case\n")
    log_url = f"sqlite:///{tmp_path / 'log.db'}"
    code, _, err = run(
        capsys, "--log", log_url, "cdc", "run", "--db", db, "--config", str(config),
        "--create-slot", "--once", "--topic", "all-cases",
    )  # fmt: skip
    assert code == 0 and "0 stubs published" in err
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("INSERT INTO cases VALUES (5, 'd', 'x')")
    code, _, err = run(
        capsys, "--log", log_url, "cdc", "run", "--db", db, "--config", str(config), "--once",
        "--topic", "all-cases",
    )  # fmt: skip
    assert code == 0 and "1 stub published" in err
    assert [(c.topic, c.id) for c in read_log(SQLiteLog(tmp_path / "log.db"))] == [
        ("all-cases", "5")
    ]
    assert run(capsys, "cdc", "slot", "drop", slot, "--db", db)[0] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--slot", "s1"], "no tables"),
        (["run", "--table", "cases:id:case"], "no slot"),
        (["run", "--slot", "s1", "--table", "cases:id"], "invalid table spec"),
        (
            ["run", "--slot", "s1", "--table", "cases:id:case"],
            "replication slot 's1' does not exist",
        ),
        (
            ["run", "--slot", "s2", "--table", "nopk:id:x", "--create-slot"],
            "nopk has no primary key",
        ),
        (["slot", "create", "Bad-Name"], "invalid replication slot name"),
        (["slot", "drop", "never_created"], "does not exist"),
        (["slot", "show", "never_created"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path, args: list[str], message: str
) -> None:
    log_url = f"sqlite:///{tmp_path / 'log.db'}"
    code, _, err = run(capsys, "--log", log_url, "cdc", *args, "--db", db)
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with psycopg.connect(db, autocommit=True) as conn:  # leave no slot behind
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = 's2'"
        )


def test_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "cdc", "slot", "show", "--db", "postgresql://nobody@127.0.0.1:1/x")
    assert code == 2 and "cannot connect to PostgreSQL" in err
