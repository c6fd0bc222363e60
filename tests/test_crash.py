"""The crash test: a pillow killed with SIGKILL at any point loses nothing.

A subprocess runs the recorder test app (tests/apps/recorder.py) through the real CLI; it
appends every change it processes to a file. The pillow is killed at several points (after
N changes, half way through a batch, right after a checkpoint, and from outside while it
runs), restarted each time, and new changes keep arriving between runs. At the end every
published change was processed at least once and the checkpoints reached the heads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

from changefeed import App, BulkProcessor, Change, ChangeFailure, Pillow
from changefeed.backends.local import SQLiteLog
from changefeed.change import ChangeMeta, TopicPartition
from changefeed.checkpoints import CheckpointStore
from changefeed.stores.base import Fetched
from changefeed.stores.sql import SQLDocumentStore

pytestmark = pytest.mark.slow  # server-heavy end to end; `pytest -m "not slow"` skips it

ROOT = Path(__file__).resolve().parent.parent
TOPIC = "records"


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.log = SQLiteLog(tmp_path / "log.db")
        self.log.admin().create_topic(TOPIC, 3)
        self.out = tmp_path / "processed.txt"
        self.published: list[str] = []
        self.checkpoints = CheckpointStore(f"sqlite:///{tmp_path}/state.db")

    def publish(self, n: int) -> None:
        start = len(self.published)
        ids = [f"d{i}" for i in range(start, start + n)]
        with self.log.publisher() as pub:
            pub.publish_many((TOPIC, ChangeMeta(i, "memory", "docs")) for i in ids)
        self.published.extend(ids)

    def start(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        variables = {
            **os.environ,
            "CHANGEFEED_LOG": f"sqlite:///{self.tmp_path}/log.db",
            "CHANGEFEED_STATE": f"sqlite:///{self.tmp_path}/state.db",
            "RECORDER_OUT": str(self.out),
            "RECORDER_BATCH": "10",
            **env,
        }
        return subprocess.Popen(
            [sys.executable, "-m", "tests.apps.recorder", "run", "recorder", *args],
            cwd=ROOT,
            env=variables,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def run(self, crash: str | None = None) -> int:
        env = {"RECORDER_CRASH": crash} if crash else {}
        proc = self.start("--once", **env)
        _, stderr = proc.communicate(timeout=60)
        if crash is None:
            assert proc.returncode == 0, stderr.decode()
        return proc.returncode

    def processed(self) -> list[str]:
        if not self.out.exists():
            return []
        return [line.split()[-1] for line in self.out.read_text().splitlines()]

    def progress(self) -> int:
        return sum(self.checkpoints.get("recorder").values())


def test_sigkill_at_any_point_loses_nothing(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.publish(200)
    progress = [h.progress()]

    # Killed after 25 changes were processed: mid-way through the third batch.
    assert h.run("after:25") == -signal.SIGKILL
    assert len(h.processed()) == 25
    progress.append(h.progress())
    assert progress[-1] < 25  # the batch holding the 25th change was not checkpointed

    # Killed half way through a batch, with new changes published meanwhile.
    h.publish(50)
    assert h.run("midbatch:3") == -signal.SIGKILL
    progress.append(h.progress())

    # Killed right after a checkpoint was written.
    assert h.run("checkpoint:2") == -signal.SIGKILL
    progress.append(h.progress())

    # Killed from outside while it runs forever and changes keep coming.
    proc = h.start(RECORDER_DELAY="0.05")
    h.publish(30)
    before = len(h.processed())
    deadline = time.monotonic() + 30
    while len(h.processed()) < before + 30 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    progress.append(h.progress())
    h.publish(20)

    # Killed after the very first change of a run.
    assert h.run("after:1") == -signal.SIGKILL
    progress.append(h.progress())

    # A clean run catches up.
    h.run()
    progress.append(h.progress())

    assert progress == sorted(progress), "checkpoints never go backwards"
    assert progress[-1] == len(h.published) == 300
    processed = h.processed()
    assert set(processed) == set(h.published), "every published change was processed"
    assert len(processed) > len(h.published), "the crashes did cause replays"
    feed = h.log.change_feed([TOPIC])
    assert h.checkpoints.get("recorder") == feed.latest_offsets()
    feed.close()


# -- a pipelined pillow killed between the fetch of batch N+1 and the checkpoint of N --------
#
# The child process runs `fetching_app` through the real CLI. Its pillow fetches documents
# from a SQL store (so it is pipelined: a reader thread fetches batch N+1 while batch N is
# processed). In batch FETCHING_CRASH the processor writes its lines, waits until the
# reader has fetched the next batch, and SIGKILLs the process: batch N is processed but not
# checkpointed, N+1 fetched but not processed.


class _WatchedStore(SQLDocumentStore):
    """Tells the processor when the k-th bulk fetch has returned."""

    def __init__(self, url: str) -> None:
        super().__init__(url, "docs", data_source_name="docs")
        self.fetches = 0
        self.fetched: dict[int, threading.Event] = {}
        self._lock = threading.Lock()

    def event(self, k: int) -> threading.Event:
        with self._lock:
            return self.fetched.setdefault(k, threading.Event())

    def get_documents(self, doc_ids: Iterable[str]) -> dict[str, Fetched]:
        found = super().get_documents(doc_ids)
        self.fetches += 1
        self.event(self.fetches).set()
        return found


class _FetchingRecorder(BulkProcessor):
    """Appends ``id version`` per change (unbuffered, so a SIGKILL loses nothing written).
    The lines are prepared with the fetch (`prepare_changes`, on the reader thread), as a
    report table's rows are: the kill also drops a batch prepared and never written."""

    needs_documents = True

    def __init__(self, path: str, store: _WatchedStore, crash_batch: int) -> None:
        self.path = path
        self.store = store
        self.crash_batch = crash_batch
        self.batches = 0

    def prepare_changes(self, changes: Sequence[Change]) -> object:
        lines = []
        for c in changes:
            assert c.document is not None
            lines.append(f"{c.id} {c.document['_version']}\n")
        return lines

    def process_changes(self, changes: Sequence[Change]) -> list[ChangeFailure]:
        return self.process_prepared(changes, self.prepare_changes(changes))

    def process_prepared(self, changes: Sequence[Change], prepared: object) -> list[ChangeFailure]:
        assert isinstance(prepared, list)
        self.batches += 1
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            for line in prepared:
                os.write(fd, line.encode())
        finally:
            os.close(fd)
        # The reader fetches the next batch meanwhile; die once it has.
        if self.batches == self.crash_batch and self.store.event(self.batches + 1).wait(60):
            os.kill(os.getpid(), signal.SIGKILL)
        return []


fetching_app = App()


@fetching_app.pillow("fetching")
def _fetching_pillow(app: App) -> Pillow:
    store = _WatchedStore(os.environ["FETCHING_STORE"])
    app.document_stores.register(store)
    crash = int(os.environ.get("FETCHING_CRASH", "0"))
    proc = _FetchingRecorder(os.environ["FETCHING_OUT"], store, crash)
    return app.constructed_pillow(
        "fetching", [TOPIC], proc, batch_size=10, max_wait=60, pipeline=True
    )


def test_sigkill_between_the_fetch_of_the_next_batch_and_this_checkpoint(tmp_path: Path) -> None:
    log = SQLiteLog(tmp_path / "log.db")
    log.admin().create_topic(TOPIC, 1)
    store = SQLDocumentStore(f"sqlite:///{tmp_path}/docs.db", "docs", data_source_name="docs")
    store.create()
    published: list[tuple[str, int]] = []
    with log.publisher() as pub:
        for i in range(60):
            doc_id = f"d{i % 25}"  # documents change again in later batches
            version = store.save(doc_id, {"i": i})
            pub.publish(TOPIC, ChangeMeta(doc_id, "sql", "docs", version=version))
            published.append((doc_id, version))
    store.close()
    out = tmp_path / "processed.txt"
    checkpoints = CheckpointStore(f"sqlite:///{tmp_path}/state.db")

    def run(crash: int) -> int:
        env = {
            **os.environ,
            "CHANGEFEED_LOG": f"sqlite:///{tmp_path}/log.db",
            "CHANGEFEED_STATE": f"sqlite:///{tmp_path}/state.db",
            "FETCHING_STORE": f"sqlite:///{tmp_path}/docs.db",
            "FETCHING_OUT": str(out),
            "FETCHING_CRASH": str(crash),
        }
        code = (
            "from changefeed.cli import main; "
            "main(['--app', 'tests.test_crash:fetching_app', 'run', 'fetching', '--once'])"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _, stderr = proc.communicate(timeout=120)
        if not crash:
            assert proc.returncode == 0, stderr.decode()
        return proc.returncode

    def lines() -> list[tuple[str, int]]:
        text = out.read_text() if out.exists() else ""
        return [(i, int(v)) for i, v in (line.split() for line in text.splitlines())]

    # Killed in batch 3, after batch 4 was fetched: batches 1-2 are checkpointed, 3 is not.
    assert run(crash=3) == -signal.SIGKILL
    assert checkpoints.get("fetching") == {TopicPartition(TOPIC, 0): 20}
    assert len(lines()) == 30

    # Again in the first batch of the next run (batch 3 replayed), after batch 4's fetch.
    assert run(crash=1) == -signal.SIGKILL
    assert checkpoints.get("fetching") == {TopicPartition(TOPIC, 0): 20}

    # A clean run catches up.
    run(crash=0)
    assert checkpoints.get("fetching") == {TopicPartition(TOPIC, 0): 60}
    processed = lines()
    # Every change was processed with its own version or a later one, batch 3 twice.
    latest = {doc_id: version for doc_id, version in published}
    for doc_id, version in published:
        assert any(d == doc_id and v >= version for d, v in processed), (doc_id, version)
    assert {d: v for d, v in processed} == latest
    assert len(processed) == 60 + 10 + 10
