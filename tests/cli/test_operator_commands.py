"""Operator commands as the docs describe them (issue 20), driven as a user drives them."""

from __future__ import annotations

import json
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from changefeed import App, Change, ChangeMeta, SQLDocumentStore
from changefeed.change import TopicPartition
from changefeed.checkpoints import CheckpointStore
from changefeed.cli.common import cli
from changefeed.cli.output import size
from changefeed.errors import ErrorQueue
from tests._cli import ROOT, cf, recorder_env


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return recorder_env(tmp_path)


def _one_error_line(result: object) -> str:
    stderr = getattr(result, "stderr", "")
    lines = stderr.strip().splitlines()
    assert getattr(result, "returncode", None) == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("changefeed: error:"), stderr
    return str(lines[0])


def test_an_app_attribute_that_is_not_an_app_is_one_line(env: dict[str, str]) -> None:
    line = _one_error_line(cf(env, "--app", "json:dumps", "status"))
    assert "json:dumps is not a changefeed.App" in line


@pytest.mark.parametrize("command", [("run", "recorder"), ("reindex", "recorder")])
def test_a_pillow_named_without_an_app_says_no_app_was_given(
    env: dict[str, str], command: tuple[str, ...]
) -> None:
    del env["CHANGEFEED_APP"]
    line = _one_error_line(cf(env, *command))
    assert "no app was given (--app or CHANGEFEED_APP)" in line


def test_an_interrupted_reindex_exits_130_and_resumes(env: dict[str, str], tmp_path: Path) -> None:
    docs_url = f"sqlite:///{tmp_path}/docs.db"
    cases = SQLDocumentStore(docs_url, "cases")
    cases.create()
    for i in range(6):
        cases.save(f"case-{i}", {"name": f"Case {i}"})
    cases.close()
    env = {**env, "CHANGEFEED_APP": "tests.apps.interrupts:app", "INTERRUPTS_DOCS": docs_url}

    stopped = cf(
        {**env, "INTERRUPTS_ON": "1"},
        "reindex",
        "interrupted",
        "--chunk-size",
        "2",
        "--no-progress",
    )

    assert stopped.returncode == 130, stopped.stderr
    assert "progress saved" in stopped.stderr and "--resume" in stopped.stderr
    resumed = cf(env, "reindex", "interrupted", "--resume", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed, " in resumed.stderr and "documents from the stores" in resumed.stderr


def _publish(env: dict[str, str], count: int) -> list[str]:
    app = App(env["CHANGEFEED_LOG"], env["CHANGEFEED_STATE"])
    ids = [f"doc-{i:02d}" for i in range(count)]
    for doc_id in ids:
        app.publish(ChangeMeta(doc_id, "memory", "docs"), "records")
    app.close()
    return ids


def _printed_ids(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line)["stub"]["document_id"] for line in result.stdout.splitlines()]


def test_tail_n_prints_n_changes_in_all_partitions_together(env: dict[str, str]) -> None:
    ids = _publish(env, 12)  # two partitions (recorder_env)

    assert _printed_ids(cf(env, "tail", "records", "-n", "5")) == ids[-5:]
    assert _printed_ids(cf(env, "tail", "records", "--from-beginning", "-n", "4")) == ids[:4]
    assert len(_printed_ids(cf(env, "tail", "records"))) == 10
    assert _printed_ids(cf(env, "tail", "records", "--from-beginning")) == ids


@pytest.mark.parametrize(
    "writer", [("checkpoint", "dump-remaining", "recorder"), ("changes", "records", "--json")]
)
def test_run_docs_reads_what_the_cli_writes(
    env: dict[str, str], tmp_path: Path, writer: tuple[str, ...]
) -> None:
    ids = _publish(env, 3)
    written = cf(env, *writer)
    assert written.returncode == 0, written.stderr
    docs = tmp_path / "docs.jsonl"
    docs.write_text(written.stdout)

    result = cf(env, "run", "recorder", "--docs", str(docs))

    assert result.returncode == 0, result.stderr
    assert "3 documents processed" in result.stderr
    recorded = (tmp_path / "recorded.txt").read_text().splitlines()
    assert sorted(line.split()[-1] for line in recorded) == ids


@pytest.mark.parametrize(
    "command",
    [
        ("pillows",),
        ("status",),
        ("status", "--json"),
        ("run", "recorderr"),
        ("checkpoint", "show", "recorder"),
        ("checkpoint", "history"),
        ("errors", "list"),
        ("tail", "records"),
    ],
)
def test_commands_that_only_look_create_no_files(
    env: dict[str, str], tmp_path: Path, command: tuple[str, ...]
) -> None:
    before = sorted(tmp_path.iterdir())

    result = cf(env, *command)

    assert result.returncode in (0, 2), result.stderr
    assert sorted(tmp_path.iterdir()) == before


def test_no_app_and_no_files_status_and_pillows_say_so(env: dict[str, str], tmp_path: Path) -> None:
    del env["CHANGEFEED_APP"]
    for command in ("status", "pillows"):
        result = cf(env, *command.split())
        assert "no app was given" in result.stdout + result.stderr, command
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_history_records_moves_and_each_is_undone_once(env: dict[str, str]) -> None:
    _publish(env, 6)
    assert "no checkpoint moves recorded yet" in cf(env, "checkpoint", "history").stdout
    moved = cf(env, "checkpoint", "set", "recorder", "records", "0", "1")
    assert moved.returncode == 0, moved.stderr
    entry = moved.stdout.split()[0].lstrip("#")

    again = cf(env, "checkpoint", "set", "recorder", "records", "0", "1")

    assert again.returncode == 0 and "nothing changed" in again.stderr
    assert len(cf(env, "checkpoint", "history").stdout.splitlines()) == 1
    assert cf(env, "checkpoint", "undo", entry).returncode == 0
    line = _one_error_line(cf(env, "checkpoint", "undo", entry))
    assert f"entry {entry} was undone already" in line


@pytest.fixture
def couch_env(env: dict[str, str]) -> dict[str, str]:
    """The docs' Couch bridge ``couch-bridge-cases``, its CouchDB unreachable (a closed
    port): what is tested here needs no CouchDB answer."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {
        **env,
        "CHANGEFEED_APP": "tests.apps.couch:app",
        "COUCH_BRIDGE_URL": f"http://admin:{'pw' * 8}@127.0.0.1:{port}/cases",
    }


BRIDGE, BRIDGE_TP = "couch-bridge-cases", TopicPartition("couch:cases", 0)


def _save_seq(env: dict[str, str]) -> None:
    """The bridge read 12 changes, up to seq "12-abc" (JSON, as the bridge writes it)."""
    CheckpointStore(env["CHANGEFEED_STATE"]).commit_seq(BRIDGE, BRIDGE_TP, '"12-abc"', 12)


def _seq_checkpoint(env: dict[str, str]) -> object:
    return CheckpointStore(env["CHANGEFEED_STATE"]).get_seq(BRIDGE, BRIDGE_TP)


@pytest.mark.parametrize(
    "command",
    [
        ("checkpoint", "reset", "couch-bridge-cases"),
        ("checkpoint", "set", "couch-bridge-cases", "couch:cases", "0", "0"),
    ],
)
def test_the_couch_replay_commands_work_as_written(
    couch_env: dict[str, str], command: tuple[str, ...]
) -> None:
    """docs/couchdb.md: setting the bridge's checkpoint to 0 replays the database."""
    _save_seq(couch_env)
    assert _seq_checkpoint(couch_env) is not None

    result = cf(couch_env, *command)

    assert result.returncode == 0, result.stderr
    assert "12 -> 0" in result.stdout and "checkpoint undo" in result.stderr
    assert _seq_checkpoint(couch_env) is None  # the bridge starts from the beginning


def test_the_couch_bridge_checkpoint_moves_only_to_replay(couch_env: dict[str, str]) -> None:
    _save_seq(couch_env)

    line = _one_error_line(cf(couch_env, "checkpoint", "set", BRIDGE, "couch:cases", "0", "5"))

    assert "moves only to 0" in line
    assert _seq_checkpoint(couch_env) is not None  # untouched


def test_status_shows_the_couch_bridge_as_rows(couch_env: dict[str, str]) -> None:
    _save_seq(couch_env)

    result = cf(couch_env, "status")

    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if "couch:cases" in line)
    cells = [cell.strip() for cell in row.split("│")[1:5]]
    assert cells == ["couch-bridge-cases", "couch:cases", "0", "12"]
    words = " ".join(result.stdout.split())  # rich wraps long lines
    assert "couch-bridge-cases (couch-bridge): idle" in words
    assert "seq 12-abc" in words and "lag unknown" in words
    for dump in ("{'", "[{", "None", "pwpw"):
        assert dump not in result.stdout


def test_republish_of_a_deleted_document_says_where_it_went(
    env: dict[str, str], tmp_path: Path
) -> None:
    docs_url = f"sqlite:///{tmp_path}/docs.db"
    cases = SQLDocumentStore(docs_url, "cases")
    cases.create()
    cases.save("live", {"doc_type": "case"})
    cases.save("gone", {"doc_type": "case"})
    cases.delete("gone")
    cases.close()
    env = {**env, "CHANGEFEED_APP": "tests.apps.interrupts:app", "INTERRUPTS_DOCS": docs_url}

    result = cf(env, "republish", "--store", "cases", "--id", "live", "--id", "gone")

    assert result.returncode == 0, result.stderr
    assert "published 2 stubs from sql/cases (1 deletion) to case (1), meta (1)" in result.stdout
    assert "1 deletion went to meta (a deleted document has no type" in result.stdout
    # The app's pillow reads "case": only "meta" is warned about.
    assert result.stderr.splitlines() == [
        "changefeed: warning: no pillow of this app reads topic 'meta': its stubs wait there "
        "for pillows elsewhere, if any"
    ]


def _commands(command: click.Command, path: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    ctx = click.Context(command, info_name=" ".join(path))
    yield " ".join(path), command.get_help(ctx)
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)  # imports a lazy command's module
            assert sub is not None, name
            yield from _commands(sub, (*path, name))


def test_help_texts_show_no_markup() -> None:
    """Docstrings become ``--help`` as they are: reStructuredText literals and roles would
    be printed as backticks and colons."""
    helps = dict(_commands(cli, ("changefeed",)))
    assert len(helps) > 40
    for path, text in helps.items():
        assert not re.search(r"`|:\w+:`|\x08", text), (path, text)


def test_the_readme_cli_table_names_commands_that_exist() -> None:
    """Each row of the README's CLI table is a command (and its subcommands) as typed."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ctx = click.Context(cli)
    rows = re.findall(r"^\| `changefeed ([a-z-]+)(?: ([a-z-]+(?:\\\|[a-z-]+)+))?", readme, re.M)
    assert len(rows) > 15
    for name, subcommands in rows:
        command = cli.get_command(ctx, name)
        assert command is not None, name
        for sub in filter(None, subcommands.split("\\|")):
            assert isinstance(command, click.Group) and sub in command.commands, (name, sub)
    assert ("retry-runner", "") in rows


def test_errors_show_prints_times_as_times(env: dict[str, str]) -> None:
    queue = ErrorQueue(env["CHANGEFEED_STATE"])
    queue.create()
    queue.add(
        "recorder",
        Change("records", 0, 0, ChangeMeta("doc", "memory", "docs")),
        "p",
        ValueError("x"),
    )

    shown = cf(env, "errors", "show", "1")

    assert shown.returncode == 0, shown.stderr
    times = [line for line in shown.stdout.splitlines() if line.split(":")[0].endswith("_at")]
    assert times and all(
        re.fullmatch(r"\w+_at: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ|-)", t) for t in times
    )


def test_sizes_read_the_same_everywhere() -> None:
    assert [size(n) for n in (None, 0, 1023, 1536, 5 * 2**20)] == [
        "-",
        "0 B",
        "1023 B",
        "1.5 KiB",
        "5.0 MiB",
    ]
