"""Numbers the CLI must refuse with one line and exit 2, at the parameter that reads them:
offsets past the head, integers beyond 64 bits; and `status` flagging a checkpoint beyond
the head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from changefeed import ChangeMeta
from changefeed.backends.local import SQLiteLog
from changefeed.checkpoints import CheckpointStore
from tests._cli import cf_in_process
from tests.cli.test_reports_cli import APP as REPORTS_APP
from tests.cli.test_reports_cli import CASES

BIG = str(2**64)


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SQLiteLog:
    monkeypatch.setenv("CHANGEFEED_LOG", f"sqlite:///{tmp_path}/log.db?partitions=1")
    monkeypatch.setenv("CHANGEFEED_STATE", f"sqlite:///{tmp_path}/state.db")
    monkeypatch.setenv("CHANGEFEED_APP", "tests.apps.recorder:app")
    monkeypatch.setenv("RECORDER_OUT", str(tmp_path / "recorded.txt"))
    monkeypatch.delenv("CHANGEFEED_DEBUG", raising=False)
    log = SQLiteLog.from_url(f"sqlite:///{tmp_path}/log.db?partitions=1")
    with log.publisher() as pub:
        pub.publish_many(("records", ChangeMeta(f"doc-{i}", "memory", "docs")) for i in range(5))
    return log


cf = cf_in_process


def saved(tmp_path: Path) -> dict[object, int]:
    store = CheckpointStore(f"sqlite:///{tmp_path}/state.db")
    try:
        return dict(store.get("recorder"))
    finally:
        store.engine.dispose()


def assert_one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_set_past_the_head_is_refused_naming_the_head(
    log: SQLiteLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cf(capsys, "checkpoint", "set", "recorder", "records", "0", "500")
    assert_one_line(code, err, "500", "head 5", "--force")
    assert saved(tmp_path) == {}
    code, out, err = cf(capsys, "checkpoint", "set", "recorder", "records", "0", "5")
    assert code == 0, err


def test_status_flags_a_checkpoint_beyond_the_head(
    log: SQLiteLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cf(capsys, "checkpoint", "set", "recorder", "records", "0", "500", "--force")
    assert code == 0, err
    code, out, _ = cf(capsys, "status", "recorder", "--json")
    (row,) = json.loads(out)[0]["partitions"]
    assert row["checkpoint"] == 500 and row["beyond_head"] is True
    code, out, _ = cf(capsys, "status", "recorder")
    assert "500!" in out and "beyond the head 5" in out
    cf(capsys, "checkpoint", "set", "recorder", "records", "0", "3")
    code, out, _ = cf(capsys, "status", "recorder", "--json")
    (row,) = json.loads(out)[0]["partitions"]
    assert row["beyond_head"] is False


@pytest.mark.parametrize(
    "args, needle",
    [
        (["checkpoint", "set", "recorder", "records", "0", BIG, "--force"], BIG),
        (["checkpoint", "set", "recorder", "records", BIG, "0"], BIG),
        (["checkpoint", "undo", BIG], BIG),
        (["checkpoint", "history", "--limit", BIG], BIG),
        (["errors", "show", BIG], BIG),
        (["errors", "list", "--limit", BIG], BIG),
        (["errors", "retry", "--id", BIG], BIG),
        (["errors", "purge", "--id", BIG], BIG),
    ],
)
def test_integers_beyond_64_bits_are_one_line_exit_2(
    log: SQLiteLog, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    code, _, err = cf(capsys, *args)
    assert_one_line(code, err, needle)
    assert saved(tmp_path) == {}


def test_history_of_an_unknown_pillow_is_refused(
    log: SQLiteLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cf(capsys, "checkpoint", "history", "NOSUCH")
    assert_one_line(code, err, "unknown pillow 'NOSUCH'", "recorder")
    code, _, err = cf(capsys, "checkpoint", "set", "recorder", "records", "0", "2")
    assert code == 0, err
    code, out, _ = cf(capsys, "checkpoint", "history", "recorder")
    assert code == 0 and "set by operator" in out


def test_bootstrap_names_a_report_column_whose_type_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path
    # With auto_rebuild (the default) a changed column is rebuilt into a shadow table (see
    # tests/test_rebuild.py); without it, bootstrap refuses and names the change.
    (workdir / "cases.yaml").write_text(CASES + "auto_rebuild: false\n")
    monkeypatch.setenv("REPORTS_TEST_DIR", str(workdir))
    code, _, err = cf(capsys, "--app", REPORTS_APP, "bootstrap")
    assert code == 0, err
    config = workdir / "cases.yaml"
    config.write_text(config.read_text().replace("{name: age, type: integer}", "{name: age}"))
    code, _, err = cf(capsys, "--app", REPORTS_APP, "bootstrap")
    assert_one_line(code, err, "age (integer -> string)", "changefeed reports rebuild cases")
