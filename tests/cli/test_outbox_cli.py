"""``changefeed outbox``: create, relay, status, purge, and one-line errors (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from changefeed.backends.local import SQLiteLog
from changefeed.change import ChangeMeta
from changefeed.cli import main
from changefeed.sources.outbox import write_change
from tests.sources._log import ids_in_log


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def log_args(tmp_path: Path) -> list[str]:
    return [
        "--log",
        f"sqlite:///{tmp_path / 'log.db'}",
        "--state",
        f"sqlite:///{tmp_path / 's.db'}",
    ]


def test_create_relay_status_purge(
    capsys: pytest.CaptureFixture[str], pg_url: str, log_args: list[str], tmp_path: Path
) -> None:
    code, out, _ = run(capsys, "outbox", "create", "--db", pg_url)
    assert code == 0 and "changefeed_outbox ready" in out
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        for i in range(3):
            write_change(conn, ChangeMeta(f"d{i}", "sql", "docs", document_type="case"))

    code, out, _ = run(capsys, "outbox", "status", "--db", pg_url, "--json")
    assert code == 0
    status = json.loads(out)
    assert status["pending"] == 3 and status["oldest_age"] >= 0

    code, _, err = run(capsys, *log_args, "outbox", "relay", "--db", pg_url, "--once", "--mark")
    assert code == 0 and "3 stubs relayed" in err
    assert ids_in_log(SQLiteLog(tmp_path / "log.db")) == ["d0", "d1", "d2"]

    code, out, _ = run(capsys, "outbox", "status", "--db", pg_url)
    assert code == 0 and "pending 0" in out and "kept after publishing 3" in out
    code, out, _ = run(capsys, "outbox", "purge", "--db", pg_url, "--older-than", "0")
    assert code == 0 and out.startswith("3 published rows removed")
    engine.dispose()


def test_custom_table_and_schema(
    capsys: pytest.CaptureFixture[str], pg_url: str, log_args: list[str]
) -> None:
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE SCHEMA app"))
    engine.dispose()
    code, out, _ = run(
        capsys, "outbox", "create", "--db", pg_url, "--table", "ob", "--schema", "app"
    )
    assert code == 0 and "app.ob ready" in out
    code, _, err = run(
        capsys, *log_args, "outbox", "relay", "--db", pg_url, "--table", "ob", "--schema", "app",
        "--once",
    )  # fmt: skip
    assert code == 0 and "0 stubs relayed" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--table", "x;drop"], "invalid outbox table name"),
        (["--table", "missing"], "outbox table missing does not exist"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str],
    pg_url: str,
    log_args: list[str],
    args: list[str],
    message: str,
) -> None:
    code, _, err = run(capsys, *log_args, "outbox", "relay", "--db", pg_url, "--once", *args)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_database_url(capsys: pytest.CaptureFixture[str], log_args: list[str]) -> None:
    code, _, err = run(capsys, *log_args, "outbox", "status", "--db", "nosuchdriver://x")
    assert code == 2 and len(err.strip().splitlines()) == 1
