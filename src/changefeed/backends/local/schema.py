"""The tables of the embedded log, and creating a topic inside a writer's transaction."""

from __future__ import annotations

import sqlite3
import time

from changefeed.identifiers import topic_name

SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    partitions INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS heads (
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches (
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    base_offset INTEGER NOT NULL,
    count INTEGER NOT NULL,
    format INTEGER NOT NULL,
    ts REAL NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (topic_id, partition, base_offset)
) WITHOUT ROWID;
"""
"""``heads`` holds each partition's next offset, so offsets stay dense after retention
removed every batch of a partition; ``batches.format`` is `records.BATCH_FORMAT`."""


def ensure_topic(conn: sqlite3.Connection, name: str, partitions: int) -> tuple[int, int]:
    """(topic id, partition count), creating the topic inside the caller's transaction."""
    row = conn.execute("SELECT id, partitions FROM topics WHERE name=?", (name,)).fetchone()
    if row is not None:
        return int(row[0]), int(row[1])
    cur = conn.execute(
        "INSERT INTO topics (name, partitions, created) VALUES (?, ?, ?)",
        (topic_name(name), partitions, time.time()),
    )
    tid = int(cur.lastrowid or 0)
    conn.executemany(
        "INSERT INTO heads (topic_id, partition, next_offset) VALUES (?, ?, 0)",
        [(tid, p) for p in range(partitions)],
    )
    return tid, partitions
