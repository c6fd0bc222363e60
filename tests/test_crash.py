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
import time
from pathlib import Path

import pytest

from changefeed.backends.local import SQLiteLog
from changefeed.change import ChangeMeta
from changefeed.checkpoints import CheckpointStore

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
