"""Every CLI command against each class of bad input (issue 12's "Done when").

One table: command x kind of bad input (unknown name, bad number, out-of-range value,
malformed URL, unwritable path, unreachable server, credentials in a URL, control
characters). Each row must exit 2 with exactly one line on stderr, no traceback, no secret
and no raw control character in the output, and leave the log and the state exactly as they
were (every row of both databases is compared before and after).
"""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from changefeed import ChangeMeta
from changefeed.backends.local import SQLiteLog
from tests._cli import cf, recorder_env

SECRET = "s3cr3t-pw"
ESC = "\x1b"


def _closed_port() -> int:
    """A local port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CLOSED = _closed_port()
PG_DOWN = f"postgresql://user:{SECRET}@127.0.0.1:{CLOSED}/db"

# (kind of bad input, command line); {tmp} is the test's folder, {file} a regular file.
CASES = [
    # unknown names
    ("unknown name", "status NOSUCH"),
    ("unknown name", "run NOSUCH"),
    ("unknown name", "checkpoint show NOSUCH"),
    ("unknown name", "checkpoint history NOSUCH"),
    ("unknown name", "checkpoint set NOSUCH records 0 1"),
    ("unknown name", "checkpoint reset NOSUCH"),
    ("unknown name", "checkpoint undo 999"),
    ("unknown name", "errors show 999"),
    ("unknown name", "reindex NOSUCH"),
    ("unknown name", "--app no_such_module:app pillows"),
    ("unknown name", "tail no-such-topic!"),
    ("unknown name", "errors list --pillow NOSUCH"),
    ("unknown name", "errors retry --pillow NOSUCH"),
    ("unknown name", "errors retry --id 999"),
    # bad numbers
    ("bad number", "checkpoint set recorder records x 1"),
    ("bad number", "checkpoint undo abc"),
    ("bad number", "errors show abc"),
    ("bad number", "errors list --limit abc"),
    ("bad number", "status --watch abc"),
    ("bad number", "topics create newtopic -p abc"),
    ("bad number", "errors purge --older-than abc"),
    # out-of-range values
    ("out of range", "checkpoint set recorder records 5 0"),
    ("out of range", "checkpoint set recorder records -1 0"),
    ("out of range", "checkpoint history --limit 0"),
    ("out of range", "run recorder --num-processes 2 --process-number 2"),
    ("out of range", "topics create newtopic -p 0"),
    ("out of range", "checkpoint set recorder records 0 1000"),
    ("out of range", "checkpoint set recorder records 0 99999999999999999999"),
    ("out of range", "errors show 99999999999999999999"),
    ("out of range", "topics create newtopic -p 2000000000"),
    ("out of range", "tail records -n 99999999999999999999"),
    ("out of range", "tail records --limit 99999999999999999999"),
    ("out of range", "changes records --limit 99999999999999999999"),
    ("out of range", "verify recorder --sample 99999999999999999999"),
    ("out of range", "verify recorder --chunk-size 99999999999999999999"),
    ("out of range", "retry-runner --once --limit 99999999999999999999"),
    # malformed URLs
    ("malformed URL", "--log bogus://x status"),
    ("malformed URL", "--state bogus://x status"),
    ("malformed URL", "--state :::: checkpoint history"),
    ("malformed URL", "--log sqlite:///{tmp}/log.db?bogus=1 topics list"),
    ("malformed URL", "cdc slot show --db bogus://x"),
    ("malformed URL", "outbox status --db bogus://x"),
    # unwritable paths
    ("unwritable path", "--state sqlite:///{file}/x.db checkpoint history"),
    ("unwritable path", "--state sqlite:///{file}/x.db errors list"),
    ("unwritable path", "--log sqlite:///{file}/x.db topics list"),
    ("unwritable path", "--log sqlite:///{file}/x.db tail records"),
    ("unwritable path", "reports validate {tmp}/missing.yaml"),
    # unreachable servers (a closed local port), with a password in the URL
    ("unreachable server", "--state " + PG_DOWN + " status"),
    ("unreachable server", "--state " + PG_DOWN + " checkpoint history"),
    ("unreachable server", "--state " + PG_DOWN + " errors list"),
    ("unreachable server", "--state " + PG_DOWN + " errors purge --yes"),
    ("unreachable server", "cdc slot show --db " + PG_DOWN),
    ("unreachable server", "outbox status --db " + PG_DOWN),
    # credentials in a URL that is refused for another reason
    ("credentials", f"--log kafka://user:{SECRET}@127.0.0.1:1 status"),
    ("credentials", f"--log ftp://user:{SECRET}@example/x status"),
    ("credentials", f"--state bogus://user:{SECRET}@host/db status"),
    # control characters in names
    ("control characters", "run bad\x1b[31mname\nforged"),
    ("control characters", "checkpoint history x\x1b]0;pwned\x07"),
    ("control characters", "checkpoint show x\x1b[2J"),
    ("control characters", "tail t\x1b[2J"),
    ("control characters", "topics create t\x1b[31m"),
    ("control characters", "status x\rforged"),
    # services that would be reachable from other machines without a token
    ("no token", "dashboard --host 0.0.0.0"),
    ("no token", "run recorder --metrics-port 0 --metrics-host 0.0.0.0"),
    ("no token", "run recorder --metrics-port 0 --metrics-host 0.0.0.0 --metrics-token short"),
    ("no token", "run --all --metrics-port 0 --metrics-host 0.0.0.0"),
    ("no token", "run --all --metrics-port 0 --metrics-host 0.0.0.0 --metrics-token short"),
    ("no token", "supervise --all --metrics-port 0 --metrics-host 0.0.0.0"),
]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A log with three changes, a pillow that read them (checkpoints and history) and a
    regular file to use as a directory that cannot be made."""
    tmp = tmp_path_factory.mktemp("edges")
    env = recorder_env(tmp)
    for name in ("CHANGEFEED_DASHBOARD_TOKEN", "CHANGEFEED_METRICS_TOKEN"):
        env.pop(name, None)
    log = SQLiteLog.from_url(env["CHANGEFEED_LOG"])
    with log.publisher() as pub:
        pub.publish_many(("records", ChangeMeta(f"doc-{i}", "memory", "docs")) for i in range(3))
    log.close()
    ran = cf(env, "run", "recorder", "--once")
    assert ran.returncode == 0, ran.stderr
    # The error queue's tables are made on first use: make them now, so the rows compared
    # below are the whole state.
    assert cf(env, "errors", "list").returncode == 0
    (tmp / "file").write_text("not a folder")
    return {"env": env, "tmp": tmp}


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of a SQLite file (read-only, so reading changes nothing)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: sorted(map(tuple, conn.execute(f'SELECT * FROM "{t}"'))) for t in tables}
    finally:
        conn.close()


@pytest.mark.parametrize("kind, command", CASES)
def test_bad_input_is_one_safe_line_and_changes_nothing(
    seeded: dict[str, Any], kind: str, command: str
) -> None:
    tmp: Path = seeded["tmp"]
    args = command.format(tmp=tmp, file=tmp / "file").split(" ")
    before = {name: dump(tmp / name) for name in ("log.db", "state.db")}
    files_before = _files(tmp)
    result = cf(seeded["env"], *args)
    out = result.stdout + result.stderr
    assert result.returncode == 2, (kind, result.returncode, out)
    lines = result.stderr.strip("\n").split("\n")
    assert len(lines) == 1, (kind, result.stderr)
    assert lines[0].startswith("changefeed: error:"), result.stderr
    assert "Traceback" not in out
    assert SECRET not in out, out
    for char in (ESC, "\r", "\x07"):
        assert char not in out, repr(out)
    assert {name: dump(tmp / name) for name in ("log.db", "state.db")} == before
    assert _files(tmp) == files_before


def _files(folder: Path) -> list[str]:
    """The folder's files, without SQLite's -wal/-shm companions (they come and go)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(("-wal", "-shm")))
