"""A batch of the embedded log damaged by hand (or a disk fault) is queued as invalid stubs,
one per record, instead of crashing the pillow on every run (issue 12)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from changefeed import ChangeMeta
from changefeed.backends.local import SQLiteLog
from tests._cli import cf, recorder_env


@pytest.mark.parametrize(
    "payload",
    [b'[{"document_id":"doc-0","data_so', b"{}", b"[1, 2]", b"\xff\xfe"],
    ids=["truncated", "not-a-list", "too-few-records", "not-json"],
)
def test_a_damaged_batch_is_queued_and_the_rest_processed(tmp_path: Path, payload: bytes) -> None:
    env = recorder_env(tmp_path, partitions=1)
    log = SQLiteLog.from_url(env["CHANGEFEED_LOG"])
    for prefix, n in (("doc", 3), ("later", 2)):  # two stored batches
        with log.publisher() as pub:
            pub.publish_many(
                ("records", ChangeMeta(f"{prefix}-{i}", "memory", "d")) for i in range(n)
            )
    log.close()
    with sqlite3.connect(tmp_path / "log.db") as conn:
        conn.execute("UPDATE batches SET payload = ? WHERE base_offset = 0", (payload,))
    conn.close()
    for _ in range(2):  # the second run must not queue them again nor fail
        ran = cf(env, "run", "recorder", "--once")
        assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "recorded.txt").read_text().split()[3::4] == ["later-0", "later-1"]
    listed = json.loads(cf(env, "errors", "list", "--json").stdout)
    assert [e["offset"] for e in listed] == [0, 1, 2]
    assert all("damaged log batch at offset 0" in e["message"] for e in listed)
