"""``errors retry --id N`` retries entry N and nothing else, even when other entries of the
same pillow are due too (issue 12: the retry used to re-process every due entry)."""

from __future__ import annotations

from pathlib import Path

from changefeed.change import Change, ChangeMeta
from changefeed.errors import PENDING, ErrorQueue
from tests._cli import cf, recorder_env


def test_retry_by_id_leaves_other_due_entries_alone(tmp_path: Path) -> None:
    env = recorder_env(tmp_path, partitions=1)
    queue = ErrorQueue(env["CHANGEFEED_STATE"])
    for doc_id in ("asked", "other"):
        change = Change("records", 0, 0, ChangeMeta(doc_id, "memory", "docs"))
        queue.add("recorder", change, "recorder", ValueError("refused"))
    asked, other = (r.id for r in queue.list())
    queue.make_due(ids=[other])  # due now: a retry of everything due would take it too
    before = queue.get(other)
    result = cf(env, "errors", "retry", "--id", str(asked))
    assert result.returncode == 0, result.stderr
    assert "recorder: 1 succeeded, 0 failed again" in result.stdout
    assert queue.get(asked) is None
    after = queue.get(other)
    assert after is not None and after.status == PENDING
    assert (after.attempts, after.next_attempt_at) == (before.attempts, before.next_attempt_at)  # type: ignore[union-attr]
    recorded = (tmp_path / "recorded.txt").read_text().split()
    assert "asked" in recorded and "other" not in recorded
