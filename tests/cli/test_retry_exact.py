"""``errors retry --id N`` retries entry N and nothing else, even when other entries of the
same pillow are due too (issue 12: the retry used to re-process every due entry); an entry
that cannot succeed stays parked however it is retried (issue 20)."""

from __future__ import annotations

from pathlib import Path

from changefeed.change import Change, ChangeMeta, InvalidChangeError
from changefeed.errors import PARKED, PENDING, ErrorQueue
from changefeed.failures import INVALID_STUB
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


def test_an_invalid_stub_retried_by_hand_stays_parked(tmp_path: Path) -> None:
    env = recorder_env(tmp_path, partitions=1)
    queue = ErrorQueue(env["CHANGEFEED_STATE"])
    junk = Change.from_raw("records", 0, 4, b"{not json", key="junk")
    queue.add("recorder", junk, INVALID_STUB, InvalidChangeError(junk.error), retryable=False)
    (entry,) = queue.list()
    for args in (("--id", str(entry.id)), ("--pillow", "recorder")):
        result = cf(env, "errors", "retry", *args)
        assert result.returncode == 0, result.stderr
        assert "recorder: 0 succeeded, 1 failed again" in result.stdout
        after = queue.get(entry.id)
        assert after is not None and (after.status, after.next_attempt_at) == (PARKED, None)
    assert after.attempts == 3
