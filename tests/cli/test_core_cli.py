"""The foundation commands through the real entry point: run, status, checkpoint, errors,
tail, and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from changefeed import ChangeMeta
from changefeed.backends.local import SQLiteLog
from changefeed.change import Change
from tests._cli import cf, recorder_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return recorder_env(tmp_path)


def publish(env: dict[str, str], n: int, start: int = 0) -> SQLiteLog:
    log = SQLiteLog.from_url(env["CHANGEFEED_LOG"])
    with log.publisher() as pub:
        pub.publish_many(
            ("records", ChangeMeta(f"doc-{i}", "memory", "docs")) for i in range(start, start + n)
        )
    return log


@pytest.mark.parametrize(
    "args, message",
    [
        (["--app", "no_such_module:app", "status"], "cannot import app module"),
        (["--app", "tests.apps.recorder", "status"], "module:attribute"),
        (["--log", "ftp://example/x", "status"], "unsupported log URL"),
        (["--log", "sqlite:///x.db?bogus=1", "status"], "unknown sqlite log option"),
        (["run", "no-such-pillow"], "unknown pillow 'no-such-pillow'"),
        (["run", "recorder", "--num-processes", "2", "--process-number", "2"], "--process-number"),
        (["checkpoint", "set", "recorder", "records", "-1", "5"], "-1"),
        (["checkpoint", "set", "recorder", "other", "0", "5"], "does not read"),
        (["checkpoint", "undo", "999"], "no checkpoint history entry 999"),
        (["tail", "bad topic!"], "invalid topic name"),
        (["errors", "purge"], "purge needs a filter"),
        (["errors", "show", "42"], "no error #42"),
        (["no-such-command"], "No such command"),
    ],
)
def test_bad_input_is_one_line_exit_2(env: dict[str, str], args: list[str], message: str) -> None:
    publish(env, 1)
    result = cf(env, *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("changefeed: error:")
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_a_feed_option_the_log_lacks_is_one_line_exit_2(env: dict[str, str]) -> None:
    """A pillow asking the embedded log for a Kafka consumer group (``feed_options``)."""
    result = cf({**env, "RECORDER_GROUP": "readers"}, "run", "recorder", "--once")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == [
        "changefeed: error: feed option 'group_id': not an option of this log (SQLiteLog)"
    ]


def test_run_status_and_checkpoint_commands(env: dict[str, str], tmp_path: Path) -> None:
    publish(env, 30)
    result = cf(env, "run", "recorder", "--once")
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / "recorded.txt").read_text().splitlines()) == 30

    status = json.loads(cf(env, "status", "--json").stdout)
    assert status[0]["lag"] == 0
    assert sum(p["head"] for p in status[0]["partitions"]) == 30
    assert all(p["checkpoint_age"] is not None for p in status[0]["partitions"])

    publish(env, 10, start=30)
    status = json.loads(cf(env, "status", "--json").stdout)
    assert status[0]["lag"] == 10
    table = cf(env, "status")
    assert table.returncode == 0 and "lag 10" in table.stdout

    shown = json.loads(cf(env, "checkpoint", "show", "recorder", "--json").stdout)
    assert sum(r["head"] - r["checkpoint"] for r in shown) == 10

    # Move one partition back, then undo the move from the history.
    first = shown[0]
    moved = cf(env, "checkpoint", "set", "recorder", "records", str(first["partition"]), "0")
    assert moved.returncode == 0, moved.stderr
    history = json.loads(cf(env, "checkpoint", "history", "recorder", "--json").stdout)
    assert history[0]["old_offset"] == first["checkpoint"] and history[0]["new_offset"] == 0
    assert history[0]["changed_by"]
    undo = cf(env, "checkpoint", "undo", str(history[0]["id"]))
    assert undo.returncode == 0, undo.stderr
    again = json.loads(cf(env, "checkpoint", "show", "recorder", "--json").stdout)
    assert again[0]["checkpoint"] == first["checkpoint"]

    # to-head skips the 10 unread changes; reset re-reads everything.
    assert cf(env, "checkpoint", "to-head", "recorder").returncode == 0
    assert json.loads(cf(env, "status", "--json").stdout)[0]["lag"] == 0
    assert cf(env, "checkpoint", "reset", "recorder").returncode == 0
    assert json.loads(cf(env, "status", "--json").stdout)[0]["lag"] == 40


def test_errors_commands(env: dict[str, str], tmp_path: Path) -> None:
    log = publish(env, 3)
    with log.publisher() as pub:
        pub.append_raw([("records", "poison", b"{not json")])
    assert cf(env, "run", "recorder", "--once").returncode == 0
    listed = json.loads(cf(env, "errors", "list", "--json").stdout)
    assert len(listed) == 1
    assert listed[0]["processor"] == "(invalid stub)"
    assert listed[0]["status"] == "parked"
    assert "not valid JSON" in listed[0]["message"]
    detail = json.loads(cf(env, "errors", "show", "--json", str(listed[0]["id"])).stdout)
    assert detail["stub"] == "{not json"
    assert "InvalidChangeError" in detail["traceback"]
    # Retrying an invalid stub fails again and keeps it parked; purge removes it.
    retried = cf(env, "errors", "retry", "--id", str(listed[0]["id"]))
    assert retried.returncode == 0, retried.stderr
    assert "0 succeeded, 1 failed again" in retried.stdout
    purged = cf(env, "errors", "purge", "--status", "parked", "--pillow", "recorder")
    assert purged.returncode == 0, purged.stderr
    assert "1 error purged" in purged.stdout
    assert json.loads(cf(env, "errors", "list", "--json").stdout) == []


def test_tail_prints_last_changes(env: dict[str, str]) -> None:
    publish(env, 8)
    result = cf(env, "tail", "records", "-n", "2")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 2  # in all, whatever the partitions (issue 20)
    assert {line["stub"]["data_source_name"] for line in lines} == {"docs"}
    everything = cf(env, "tail", "records", "--from-beginning")
    assert len(everything.stdout.splitlines()) == 8


def test_demo_small_run_proves_tables_match(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "changefeed",
            "demo",
            "--cases",
            "60",
            "--forms",
            "40",
            "--updates",
            "150",
            "--dir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: every report table matches its source documents" in result.stdout
    assert "250 document writes, 250 changes published" in result.stdout


# -- runnables that are not pillows ----------------------------------------------------------


@pytest.fixture
def ticker_env(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {**env, "CHANGEFEED_APP": "tests.apps.ticker:app", "TICKER_OUT": str(tmp_path / "t")}


def test_run_a_runnable_that_is_not_a_pillow(ticker_env: dict[str, str], tmp_path: Path) -> None:
    result = cf(ticker_env, "run", "ticker", "--once")
    assert result.returncode == 0, result.stderr
    assert "ticker: 3 changes read" in result.stderr
    assert (tmp_path / "t").read_text().splitlines() == ["bootstrap", "run forever=False 1 0"]

    listed = cf(ticker_env, "pillows")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].startswith("noop\ttopics=records")
    assert "ticker\tkind=ticker" in listed.stdout.splitlines()

    status = json.loads(cf(ticker_env, "status", "--json").stdout)
    assert [s.get("pillow") or s.get("runnable") for s in status] == ["noop", "ticker"]
    assert status[1]["kind"] == "ticker" and status[1]["seq"] == "7-abc"
    text = cf(ticker_env, "status", "ticker")
    assert text.returncode == 0 and "ticker (ticker): idle" in text.stdout


def test_splitting_a_runnable_that_is_not_scalable_is_one_line_exit_2(
    ticker_env: dict[str, str], tmp_path: Path
) -> None:
    result = cf(ticker_env, "run", "ticker", "--num-processes", "2", "--process-number", "1")
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("changefeed: error:")
    assert "cannot be split" in lines[0]
    assert not (tmp_path / "t").exists()  # refused before bootstrap


# -- issue 12: unknown names, terminal safety, secrets, small things ----------------------


def _queue_error(env: dict[str, str], document_id: str, message: str) -> None:
    from changefeed.errors import ErrorQueue

    queue = ErrorQueue(env["CHANGEFEED_STATE"])
    change = Change("records", 0, 0, ChangeMeta(document_id, "memory", "docs"))
    queue.add("recorder", change, "recorder", RuntimeError(message))


def test_status_without_an_app_says_so(env: dict[str, str]) -> None:
    env = {k: v for k, v in env.items() if k != "CHANGEFEED_APP"}
    result = cf(env, "status")
    assert result.returncode == 0, result.stderr
    assert "no app was given" in result.stdout
    assert "log.db" in result.stdout


def test_control_characters_are_escaped_in_human_output_not_in_json(
    env: dict[str, str],
) -> None:
    evil = "doc\x1b[31m\nforged"
    _queue_error(env, evil, f"failed at postgresql://u:{'pw' * 4}@db/x \x1b[2J")
    listed = cf(env, "errors", "list")
    assert listed.returncode == 0, listed.stderr
    assert "\x1b" not in listed.stdout
    assert "doc\\x1b[31m\\nforged" in listed.stdout
    assert "pwpwpwpw" not in listed.stdout
    as_json = json.loads(cf(env, "errors", "list", "--json").stdout)
    assert as_json[0]["document_id"] == evil
    shown = cf(env, "errors", "show", str(as_json[0]["id"]))
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout
    assert "traceback:" in shown.stdout and "stub:" in shown.stdout
    # The stub is readable JSON over several lines, not one escaped string.
    assert '"document_id":' in shown.stdout or '"id":' in shown.stdout
    assert "\\n" not in shown.stdout.split("traceback:")[1].splitlines()[1]


def test_undo_hint_names_the_entry(env: dict[str, str]) -> None:
    publish(env, 6)
    result = cf(env, "checkpoint", "set", "recorder", "records", "0", "1")
    assert result.returncode == 0, result.stderr
    entry = result.stdout.split()[0].lstrip("#")
    assert f"changefeed checkpoint undo {entry}" in result.stderr
    assert "undo ID" not in result.stderr


def test_run_prints_start_line_and_processed_and_queued(env: dict[str, str]) -> None:
    publish(env, 3)
    result = cf(env, "run", "recorder", "--once")
    assert result.returncode == 0, result.stderr
    first, *_, last = result.stderr.strip().splitlines()
    assert first.startswith("recorder: topics records; partitions records[0] from the start")
    assert "3 changes read" in last and "3 processed, 0 queued" in last


def test_status_does_not_truncate_names_when_narrow(env: dict[str, str]) -> None:
    publish(env, 1)
    env = {**env, "COLUMNS": "40"}
    result = cf(env, "status")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert rows and all("recorder" in row and "records" in row for row in rows), result.stdout


def test_log_lines_are_escaped_redacted_and_client_warnings_said_once() -> None:
    import logging

    from changefeed.cli.output import install_log_filters

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    logger = logging.getLogger("edges-test")
    logger.propagate = False
    handler = Keep()
    logger.addHandler(handler)
    install_log_filters(logger)
    logger.warning("change %s failed at %s", "id\x1b[2J\nforged", "kafka://u:pw@h:1")
    for _ in range(4):
        logging.getLogger("edges-test").warning("node http://es:9200 failed")
    assert records[0] == "change id\\x1b[2J\\nforged failed at kafka://***@h:1"
    assert records[1:] == ["node http://es:9200 failed"]


def test_metrics_with_a_token_require_it() -> None:
    import urllib.error
    import urllib.request

    from prometheus_client import CollectorRegistry

    from changefeed.metrics import serve

    token = "t" * 20
    server, _ = serve(CollectorRegistry(), 0, "127.0.0.1", token=token)
    try:
        base = f"http://127.0.0.1:{server.server_port}/metrics"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base, timeout=10)
        assert refused.value.code == 401
        with urllib.request.urlopen(f"{base}?token={token}", timeout=10) as ok:
            assert ok.status == 200
        request = urllib.request.Request(base, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as ok:
            assert ok.status == 200
    finally:
        server.shutdown()
        server.server_close()


def test_couch_store_is_part_of_the_app_configuration() -> None:
    from changefeed import App
    from changefeed.sources.couch_bridge import add_couch_bridge

    app = App("sqlite:///:memory:", "sqlite:///:memory:")
    add_couch_bridge(app, "http://u:p@127.0.0.1:1/cases")
    # No bridge built: a downstream pillow in its own process still finds the store.
    assert app.document_stores.get("couch", "cases") is not None


def test_kept_demo_prints_commands_that_work(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    env.pop("CHANGEFEED_APP", None)
    demo_dir = tmp_path / "kept"
    args = ["demo", "--dir", str(demo_dir), "--cases", "5", "--forms", "3", "--updates", "5"]
    result = cf(env, *args)
    assert result.returncode == 0, result.stderr
    commands = [line.strip() for line in result.stdout.splitlines() if "--app demo_app:app" in line]
    assert commands
    status = subprocess.run(
        commands[0], shell=True, env=env, capture_output=True, text=True, timeout=120
    )
    assert status.returncode == 0, status.stderr
    assert "case-report" in status.stdout and "form-report" in status.stdout
    gone = cf(env, "demo", "--cases", "2", "--forms", "2", "--updates", "0")
    assert "changefeed-demo-" not in gone.stdout
