"""Reading the embedded log back, and running "an application" in a process we can kill."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from changefeed.backends.local import SQLiteLog
from changefeed.change import Change


def read_log(log: SQLiteLog, topics: list[str] | None = None) -> list[Change]:
    """Every change in the log's topics (all topics by default), partition by partition."""
    names = topics or [t.name for t in log.admin().list_topics()]
    if not names:
        return []
    feed = log.change_feed(names)
    try:
        since = {tp: 0 for tp in feed.topic_partitions()}
        return [c for c in feed.iter_changes(since) if c is not None]
    finally:
        feed.close()


def ids_in_log(log: SQLiteLog, topics: list[str] | None = None) -> list[str]:
    return [c.id for c in read_log(log, topics)]


def run_python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a snippet in a fresh interpreter (it may SIGKILL itself)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_command(*args: str) -> list[str]:
    """The ``changefeed`` command line, run by this interpreter."""
    return [sys.executable, "-c", "from changefeed.cli import main; main()", *args]
