"""`changefeed status` reports CDC replication slot lag next to the pillows."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg
from click.testing import CliRunner

from changefeed import App
from changefeed.cli.common import cli
from changefeed.cli.pillows import replication_slot_status  # also registers the status command
from changefeed.sources.postgres_cdc import create_slot, drop_slot


def test_slot_lag_in_status(pg_dsn: str, tmp_path: Path) -> None:
    slot = f"s_{uuid.uuid4().hex[:10]}"
    create_slot(pg_dsn, slot)
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id int primary key)")
            conn.execute("INSERT INTO t SELECT generate_series(1, 500)")
        status = replication_slot_status(pg_dsn, slot)
        assert status["exists"] is True
        assert status["lag_bytes"] > 0  # nobody has read the slot yet

        runner = CliRunner()
        args = [
            "--log",
            f"sqlite:///{tmp_path}/log.db",
            "--state",
            f"sqlite:///{tmp_path}/state.db",
            "status",
            "--json",
            "--slot",
            slot,
            "--slot",
            "missing_slot",
            "--cdc-db",
            pg_dsn,
        ]
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
        reported = json.loads(result.output)
        assert [r["replication_slot"] for r in reported] == [slot, "missing_slot"]
        assert reported[0]["lag_bytes"] > 0 and reported[1]["exists"] is False

        text = runner.invoke(cli, [*args[:4], "status", "--slot", slot, "--cdc-db", pg_dsn])
        assert text.exit_code == 0, text.output
        assert f"replication slot {slot}: lag" in text.output
        assert "NOT ACTIVE" in text.output
    finally:
        drop_slot(pg_dsn, slot)


def test_app_watched_slot_and_unreachable_database(tmp_path: Path) -> None:
    app = App(f"sqlite:///{tmp_path}/log.db", f"sqlite:///{tmp_path}/state.db")
    app.watch_replication_slot("postgresql://nobody@127.0.0.1:1/none", "s1")
    [(url, slot)] = app.replication_slots
    status = replication_slot_status(url, slot)
    assert status["exists"] is None and "error" in status


def test_slot_without_database_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner(env={"CHANGEFEED_CDC_DB": ""}).invoke(
        cli, ["--log", f"sqlite:///{tmp_path}/log.db", "status", "--slot", "x"]
    )
    assert result.exit_code != 0
    assert (
        "--slot needs --cdc-db" in str(result.exception) or "--slot needs --cdc-db" in result.output
    )
