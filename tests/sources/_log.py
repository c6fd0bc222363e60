"""Reading the embedded log back, and running "an application" in a process we can kill."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

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


def kill_while_writing(
    cmd: list[str], log: SQLiteLog, writer: Callable[[], None], done: threading.Event
) -> int:
    """While ``writer`` runs in a thread (until ``done`` is set), start the publisher process
    ``cmd`` three times and SIGKILL it at a random moment once it is at work; then let it
    drain with ``--once``. Returns how many changes the killed processes had published."""
    rng = random.Random(4)
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(3):
            before = len(ids_in_log(log))
            proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while len(ids_in_log(log)) == before and time.monotonic() < deadline:
                time.sleep(0.02)  # wait until this process is at work, then kill it mid-flow
            time.sleep(rng.uniform(0, 0.3))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    finally:
        done.set()
        thread.join()
    published_by_killed = len(ids_in_log(log))
    final = subprocess.run([*cmd, "--once"], capture_output=True, text=True, timeout=60)
    assert final.returncode == 0, final.stderr
    return published_by_killed
