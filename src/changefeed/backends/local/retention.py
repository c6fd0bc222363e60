"""Removing old records from the embedded log, as Kafka's retention does: whole batches
(Kafka removes whole segments), so a reader may see a gap in front of its position and
knows retention made it."""

from __future__ import annotations

import sqlite3


def remove_expired(
    conn: sqlite3.Connection,
    *,
    cutoff: float | None,
    keep_count: int | None,
) -> int:
    """Remove batches written before ``cutoff`` (a timestamp) or wholly older than the newest
    ``keep_count`` records of their partition, in one transaction. Returns batches removed."""
    removed = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        if cutoff is not None:
            removed += conn.execute("DELETE FROM batches WHERE ts < ?", (cutoff,)).rowcount
        if keep_count is not None:
            for tid, part, head in conn.execute(
                "SELECT topic_id, partition, next_offset FROM heads"
            ).fetchall():
                removed += conn.execute(
                    "DELETE FROM batches WHERE topic_id=? AND partition=? "
                    "AND base_offset + count <= ?",
                    (tid, part, head - keep_count),
                ).rowcount
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return removed
