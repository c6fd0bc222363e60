"""`SQLiteAdmin`: creating, listing and growing topics of the embedded log."""

from __future__ import annotations

from changefeed.backends.base import (
    CreatedTopic,
    TopicAdmin,
    TopicInfo,
    UnknownTopicError,
    partition_count,
)
from changefeed.backends.local.connection import Connector
from changefeed.backends.local.schema import ensure_topic
from changefeed.identifiers import topic_name


class SQLiteAdmin(TopicAdmin):
    def __init__(self, log: Connector) -> None:
        self.log = log

    def create_topic(self, name: str, partitions: int = 1) -> CreatedTopic:
        topic_name(name)
        partition_count(partitions)
        conn = self.log.connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT partitions FROM topics WHERE name=?", (name,)).fetchone()
            _, existing = ensure_topic(conn, name, partitions)
            conn.execute("COMMIT")
        finally:
            conn.close()
        if row is None:
            return CreatedTopic(name, existing)
        if existing < partitions:
            self.add_partitions(name, partitions)
            return CreatedTopic(name, partitions, existed=True, previous=existing)
        return CreatedTopic(name, existing, existed=True, previous=existing)

    def list_topics(self) -> list[TopicInfo]:
        conn = self.log.connect()
        try:
            rows = conn.execute("SELECT name, partitions FROM topics ORDER BY name").fetchall()
        finally:
            conn.close()
        return [TopicInfo(name, parts) for name, parts in rows]

    def add_partitions(self, name: str, total: int) -> None:
        partition_count(total, "total partitions")
        conn = self.log.connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT id, partitions FROM topics WHERE name=?", (name,)).fetchone()
            if row is None:
                conn.execute("ROLLBACK")
                raise UnknownTopicError(f"unknown topic {name!r}")
            tid, current = row
            if total < current:
                conn.execute("ROLLBACK")
                raise ValueError(
                    f"topic {name!r} has {current} partitions; cannot shrink to {total}"
                )
            conn.executemany(
                "INSERT INTO heads (topic_id, partition, next_offset) VALUES (?, ?, 0)",
                [(tid, p) for p in range(current, total)],
            )
            conn.execute("UPDATE topics SET partitions=? WHERE id=?", (total, tid))
            conn.execute("COMMIT")
        finally:
            conn.close()
