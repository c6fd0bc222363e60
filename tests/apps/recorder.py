"""A test app whose pillow records every change it processes, one line per change.

Configured by environment variables so tests can run it in subprocesses through the real
CLI (``python -m tests.apps.recorder run recorder ...``):

- ``CHANGEFEED_LOG``, ``CHANGEFEED_STATE``: the log and state URLs (read by `App`).
- ``RECORDER_OUT``: the file the processor appends ``topic partition offset id`` lines to.
- ``RECORDER_TOPICS``: comma-separated topics (default ``records``).
- ``RECORDER_BATCH``: batch size (default 10); ``RECORDER_DELAY``: seconds to sleep per batch.
- ``RECORDER_GROUP``: read as a member of this Kafka consumer group (default: static).
- ``RECORDER_CRASH``: SIGKILL this process at a point: ``after:N`` (N changes recorded),
  ``midbatch:K`` (half way through the K-th batch), ``checkpoint:K`` (right after the K-th
  checkpoint was written).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Sequence

from changefeed import App, BulkProcessor, Change, ChangeFailure, Pillow, PillowListener
from changefeed.pillow import BatchReport


def _crash_point() -> tuple[str, int]:
    spec = os.environ.get("RECORDER_CRASH", "")
    kind, _, number = spec.partition(":")
    return kind, int(number or 0)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class Recorder(BulkProcessor):
    """Appends one line per change with unbuffered writes, so a SIGKILL loses nothing
    already recorded."""

    needs_documents = False

    def __init__(self, path: str, delay: float = 0.0) -> None:
        self.path = path
        self.delay = delay
        self.recorded = 0
        self.batches = 0
        self.crash = _crash_point()

    def _write(self, changes: Sequence[Change]) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            for c in changes:
                os.write(fd, f"{c.topic} {c.partition} {c.offset} {c.id}\n".encode())
                self.recorded += 1
                if self.crash == ("after", self.recorded):
                    _die()
        finally:
            os.close(fd)

    def process_changes(self, changes: Sequence[Change]) -> list[ChangeFailure]:
        self.batches += 1
        if self.delay:
            time.sleep(self.delay)
        if self.crash == ("midbatch", self.batches) and len(changes) > 1:
            self._write(changes[: len(changes) // 2])
            _die()
        self._write(changes)
        return []


class CrashAfterCheckpoint(PillowListener):
    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.seen = 0

    def on_batch(self, pillow: Pillow, report: BatchReport) -> None:
        self.seen += 1
        if self.seen == self.batch:
            _die()


app = App()


@app.pillow("recorder")
def recorder(app: App) -> Pillow:
    topics = os.environ.get("RECORDER_TOPICS", "records").split(",")
    pillow = app.constructed_pillow(
        "recorder",
        topics,
        Recorder(os.environ["RECORDER_OUT"], float(os.environ.get("RECORDER_DELAY", "0"))),
        batch_size=int(os.environ.get("RECORDER_BATCH", "10")),
        max_wait=0.2,
        feed_options={"group_id": group} if (group := os.environ.get("RECORDER_GROUP")) else None,
    )
    kind, number = _crash_point()
    if kind == "checkpoint":
        pillow.listeners.append(CrashAfterCheckpoint(number))
    return pillow


if __name__ == "__main__":
    from changefeed.cli import main

    main(["--app", "tests.apps.recorder:app", *sys.argv[1:]])
