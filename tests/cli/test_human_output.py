"""Human output items of issue 12 that had no test of their own: ``errors show`` prints the
stub and traceback readably, ``run`` on a terminal keeps a live progress line, and ``cdc
slot show`` never cuts slot names in narrow output."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest

from changefeed.batch import BatchReport
from changefeed.change import Change, ChangeMeta, TopicPartition
from changefeed.cli.pillows import _Progress
from changefeed.errors import ErrorQueue
from tests.cli.test_outbox_cli import run


def test_errors_show_prints_stub_and_traceback_readably(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    state = f"sqlite:///{tmp_path}/state.db"
    try:
        raise RuntimeError("index refused\x1b[2J")
    except RuntimeError as exc:
        failure = exc
    change = Change("case", 0, 4, ChangeMeta("doc-1", "sql", "db", document_type="case"))
    ErrorQueue(state).add("cases", change, "indexer", failure)
    code, out, _ = run(capsys, f"--log=sqlite:///{tmp_path}/log.db", f"--state={state}",
                       "errors", "show", "1")  # fmt: skip
    assert code == 0
    lines = out.splitlines()
    assert "stub:" in lines and "traceback:" in lines
    assert '    "document_id": "doc-1",' in lines  # indented JSON, a field per line
    assert any(line.startswith("  Traceback (most recent call last)") for line in lines)
    assert "\\n" not in out and '\\"' not in out  # not one escaped string
    assert "\x1b" not in out and "index refused\\x1b[2J" in out


class _Feed:
    def latest_offsets(self) -> dict[TopicPartition, int]:
        return {TopicPartition("records", 0): 10}


class _Pillow:
    change_feed = _Feed()


def test_live_progress_line_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    progress = _Progress(live=True)
    report = BatchReport("p", changes=4, unique=4, failures=1, duration=0.1,
                         checkpoint={TopicPartition("records", 0): 4})  # fmt: skip
    progress.on_batch(_Pillow(), report)  # type: ignore[arg-type]
    err = capsys.readouterr().err
    # Rewritten in place (click drops the erase-line escape when stderr is not a terminal).
    assert err.startswith("\r") and not err.endswith("\n")
    assert "read 4, processed 3, queued 1," in err and err.endswith("lag 6")
    progress.clear()
    assert capsys.readouterr().err.startswith("\r")
    quiet = _Progress(live=False)  # piped: no progress line, only the counts for the end
    quiet.on_batch(_Pillow(), report)  # type: ignore[arg-type]
    assert capsys.readouterr().err == "" and (quiet.processed, quiet.queued) == (3, 1)


def test_cdc_slot_show_keeps_long_names_when_narrow(
    capsys: pytest.CaptureFixture[str], pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    prefix = f"changefeed_{uuid.uuid4().hex[:8]}_slot_"
    slots = [prefix + "one", prefix + "two"]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for slot in slots:
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'wal2json')", (slot,))
    try:
        code, out, _ = run(capsys, "cdc", "slot", "show", "--db", pg_dsn)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            for slot in slots:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    assert code == 0
    folded = "".join(line.split("│")[1].strip() for line in out.splitlines() if "│" in line)
    for slot in slots:
        assert slot in folded, out  # whole, if folded over lines, never "changefee…"
    assert "…" not in out
