"""``errors retry --id N`` retries entry N and nothing else, even when other entries of the
same pillow are due too (issue 12: the retry used to re-process every due entry)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from changefeed.change import Change, ChangeMeta
from changefeed.errors import PENDING, ErrorQueue

ROOT = Path(__file__).resolve().parents[2]


def test_retry_by_id_leaves_other_due_entries_alone(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CHANGEFEED_LOG": f"sqlite:///{tmp_path}/log.db?partitions=1",
        "CHANGEFEED_STATE": f"sqlite:///{tmp_path}/state.db",
        "CHANGEFEED_APP": "tests.apps.recorder:app",
        "RECORDER_OUT": str(tmp_path / "recorded.txt"),
        "PYTHONPATH": str(ROOT),
    }
    queue = ErrorQueue(env["CHANGEFEED_STATE"])
    for doc_id in ("asked", "other"):
        change = Change("records", 0, 0, ChangeMeta(doc_id, "memory", "docs"))
        queue.add("recorder", change, "recorder", ValueError("refused"))
    asked, other = (r.id for r in queue.list())
    queue.make_due(ids=[other])  # due now: a retry of everything due would take it too
    before = queue.get(other)
    result = subprocess.run(
        [sys.executable, "-m", "changefeed", "errors", "retry", "--id", str(asked)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "recorder: 1 succeeded, 0 failed again" in result.stdout
    assert queue.get(asked) is None
    after = queue.get(other)
    assert after is not None and after.status == PENDING
    assert (after.attempts, after.next_attempt_at) == (before.attempts, before.next_attempt_at)  # type: ignore[union-attr]
    recorded = (tmp_path / "recorded.txt").read_text().split()
    assert "asked" in recorded and "other" not in recorded
