"""The embedded log: topics and partitions in one SQLite file, the zero-setup default.

Offsets are dense per partition (0, 1, 2, ...), like Kafka's, so a gap in front of a
position can only mean retention removed it. WAL mode lets one writer and many readers in
several processes share the file; writers take the lock with ``BEGIN IMMEDIATE`` and assign
offsets inside that transaction, so concurrent publishers never collide.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from changefeed.backends.base import (
    Backend,
    ChangeFeed,
    OffsetOutOfRangeError,
    Publisher,
    TopicAdmin,
    TopicInfo,
    UnknownTopicError,
)
from changefeed.change import Change, ChangeMeta, TopicPartition
from changefeed.identifiers import topic_name

OffsetResetHandler = Callable[[TopicPartition, int, int], None]

_SCHEMA = """
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
CREATE TABLE IF NOT EXISTS log (
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (topic_id, partition, offset)
) WITHOUT ROWID;
"""


def partition_for(key: str, partitions: int) -> int:
    """Same key, same partition: CRC32 of the key, as librdkafka's default partitioner."""
    return zlib.crc32(key.encode()) % partitions


class SQLiteLog(Backend):
    """An embedded, durable, multi-process log in one SQLite file.

    URL form: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` with optional
    query options ``partitions`` (for auto-created topics), ``retention_seconds``,
    ``retention_count`` (per partition) and ``synchronous`` (``normal`` or ``full``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        partitions: int = 1,
        retention_seconds: float | None = None,
        retention_count: int | None = None,
        synchronous: str = "normal",
        url: str | None = None,
    ) -> None:
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        if synchronous.lower() not in ("normal", "full"):
            raise ValueError("synchronous must be 'normal' or 'full'")
        self.path = Path(path)
        self.default_partitions = partitions
        self.retention_seconds = retention_seconds
        self.retention_count = retention_count
        self.synchronous = synchronous.upper()
        self.url = url or f"sqlite:///{self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as conn:
            conn.executescript(_SCHEMA)

    @classmethod
    def from_url(cls, url: str) -> SQLiteLog:
        parts = urlsplit(url)
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if not path:
            raise ValueError(f"sqlite log URL needs a file path: {url!r}")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        allowed = {"partitions", "retention_seconds", "retention_count", "synchronous"}
        unknown = set(query) - allowed
        if unknown:
            raise ValueError(f"unknown sqlite log option(s): {', '.join(sorted(unknown))}")
        try:
            return cls(
                path,
                partitions=int(query.get("partitions", 1)),
                retention_seconds=float(query["retention_seconds"])
                if "retention_seconds" in query
                else None,
                retention_count=int(query["retention_count"])
                if "retention_count" in query
                else None,
                synchronous=query.get("synchronous", "normal"),
                url=url,
            )
        except ValueError as exc:
            raise ValueError(f"bad sqlite log URL {url!r}: {exc}") from None

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=60.0, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA busy_timeout=60000")
        return conn

    def publisher(self) -> SQLitePublisher:
        return SQLitePublisher(self)

    def change_feed(
        self,
        topics: Sequence[str],
        *,
        client_id: str = "changefeed",
        idle_timeout: float = 1.0,
        strict: bool = False,
        poll_interval: float = 0.01,
        batch_rows: int = 2000,
    ) -> SQLiteChangeFeed:
        return SQLiteChangeFeed(
            self,
            topics,
            idle_timeout=idle_timeout,
            strict=strict,
            poll_interval=poll_interval,
            batch_rows=batch_rows,
        )

    def admin(self) -> SQLiteAdmin:
        return SQLiteAdmin(self)

    def apply_retention(self, now: float | None = None) -> int:
        """Remove records older than the retention age or beyond the retention count."""
        if self.retention_seconds is None and self.retention_count is None:
            return 0
        removed = 0
        conn = self.connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            if self.retention_seconds is not None:
                cutoff = (time.time() if now is None else now) - self.retention_seconds
                removed += conn.execute("DELETE FROM log WHERE ts < ?", (cutoff,)).rowcount
            if self.retention_count is not None:
                for tid, part, head in conn.execute(
                    "SELECT topic_id, partition, next_offset FROM heads"
                ).fetchall():
                    removed += conn.execute(
                        "DELETE FROM log WHERE topic_id=? AND partition=? AND offset<?",
                        (tid, part, head - self.retention_count),
                    ).rowcount
            conn.execute("COMMIT")
        finally:
            conn.close()
        return removed


def _ensure_topic(conn: sqlite3.Connection, name: str, partitions: int) -> tuple[int, int]:
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


class SQLitePublisher(Publisher):
    """Appends stubs; a batch is one transaction, durable when ``publish_many`` returns."""

    _RETENTION_EVERY = 50_000

    def __init__(self, log: SQLiteLog) -> None:
        self.log = log
        self._conn = log.connect()
        self._lock = threading.Lock()
        self._since_retention = 0

    def publish(self, topic: str, meta: ChangeMeta) -> None:
        self.publish_many(((topic, meta),))

    def publish_many(self, items: Iterable[tuple[str, ChangeMeta]]) -> None:
        now = time.time()
        encoded = []
        for topic, meta in items:
            if meta.publish_timestamp is None or meta.original_publication_timestamp is None:
                meta.stamped(now)
            encoded.append((topic, meta.document_id, meta.encode()))
        self.append_raw(encoded, now)

    def append_raw(self, records: Sequence[tuple[str, str, bytes]], now: float | None = None) -> None:
        """Append already-encoded (topic, key, value) records in one transaction."""
        if not records:
            return
        ts = time.time() if now is None else now
        crc32 = zlib.crc32
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                topics: dict[str, tuple[int, int]] = {}
                heads: dict[tuple[int, int], int] = {}
                rows = []
                append = rows.append
                for topic, key, value in records:
                    info = topics.get(topic)
                    if info is None:
                        info = topics[topic] = _ensure_topic(
                            conn, topic, self.log.default_partitions
                        )
                        for part, head in conn.execute(
                            "SELECT partition, next_offset FROM heads WHERE topic_id=?", (info[0],)
                        ):
                            heads[(info[0], part)] = head
                    tid, nparts = info
                    hk = (tid, crc32(key.encode()) % nparts)
                    offset = heads[hk]
                    heads[hk] = offset + 1
                    append((tid, hk[1], offset, key, value, ts))
                conn.executemany(
                    "INSERT INTO log (topic_id, partition, offset, key, value, ts) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                conn.executemany(
                    "UPDATE heads SET next_offset=? WHERE topic_id=? AND partition=?",
                    [(head, tid, part) for (tid, part), head in heads.items()],
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._since_retention += len(records)
            if self._since_retention >= self._RETENTION_EVERY:
                self._since_retention = 0
                self.log.apply_retention()

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class SQLiteAdmin(TopicAdmin):
    def __init__(self, log: SQLiteLog) -> None:
        self.log = log

    def create_topic(self, name: str, partitions: int = 1) -> None:
        topic_name(name)
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        conn = self.log.connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            _, existing = _ensure_topic(conn, name, partitions)
            conn.execute("COMMIT")
        finally:
            conn.close()
        if existing < partitions:
            self.add_partitions(name, partitions)

    def list_topics(self) -> list[TopicInfo]:
        conn = self.log.connect()
        try:
            rows = conn.execute("SELECT name, partitions FROM topics ORDER BY name").fetchall()
        finally:
            conn.close()
        return [TopicInfo(name, parts) for name, parts in rows]

    def add_partitions(self, name: str, total: int) -> None:
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
                raise ValueError(f"topic {name!r} has {current} partitions; cannot shrink to {total}")
            conn.executemany(
                "INSERT INTO heads (topic_id, partition, next_offset) VALUES (?, ?, 0)",
                [(tid, p) for p in range(current, total)],
            )
            conn.execute("UPDATE topics SET partitions=? WHERE id=?", (total, tid))
            conn.execute("COMMIT")
        finally:
            conn.close()


class SQLiteChangeFeed(ChangeFeed):
    """Reads partitions round-robin in chunks; wakes on commits by other processes.

    ``PRAGMA data_version`` changes whenever another connection commits, so an idle feed
    polls that (cheap) instead of re-running queries on every partition.
    """

    def __init__(
        self,
        log: SQLiteLog,
        topics: Sequence[str],
        *,
        idle_timeout: float = 1.0,
        strict: bool = False,
        poll_interval: float = 0.01,
        batch_rows: int = 2000,
    ) -> None:
        if not topics:
            raise ValueError("a change feed needs at least one topic")
        self.log = log
        self.topics = tuple(topic_name(t) for t in topics)
        self.idle_timeout = idle_timeout
        self.strict = strict
        self.poll_interval = poll_interval
        self.batch_rows = batch_rows
        self.on_offset_reset: OffsetResetHandler | None = None
        self._conn = log.connect()
        self._lock = threading.Lock()

    def _topic_ids(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for topic in self.topics:
            row = self._conn.execute(
                "SELECT id, partitions FROM topics WHERE name=?", (topic,)
            ).fetchone()
            if row is not None:
                out[topic] = (int(row[0]), int(row[1]))
        return out

    def topic_partitions(self) -> list[TopicPartition]:
        with self._lock:
            ids = self._topic_ids()
        return sorted(TopicPartition(t, p) for t, (_, n) in ids.items() for p in range(n))

    def latest_offsets(self) -> dict[TopicPartition, int]:
        with self._lock:
            ids = self._topic_ids()
            out: dict[TopicPartition, int] = {}
            for topic, (tid, _) in ids.items():
                for part, head in self._conn.execute(
                    "SELECT partition, next_offset FROM heads WHERE topic_id=?", (tid,)
                ):
                    out[TopicPartition(topic, part)] = head
        return out

    def earliest_offsets(self) -> dict[TopicPartition, int]:
        heads = self.latest_offsets()
        with self._lock:
            ids = self._topic_ids()
            out: dict[TopicPartition, int] = {}
            for tp, head in heads.items():
                row = self._conn.execute(
                    "SELECT MIN(offset) FROM log WHERE topic_id=? AND partition=?",
                    (ids[tp.topic][0], tp.partition),
                ).fetchone()
                out[tp] = head if row is None or row[0] is None else int(row[0])
        return out

    def _out_of_range(self, tp: TopicPartition, needed: int, earliest: int) -> int:
        if self.strict:
            raise OffsetOutOfRangeError(tp, needed, earliest)
        if self.on_offset_reset is not None:
            self.on_offset_reset(tp, needed, earliest)
        return earliest

    def iter_changes(
        self, since: Mapping[TopicPartition, int], forever: bool = False
    ) -> Iterator[Change | None]:
        positions = dict(since)
        conn = self._conn
        from_raw = Change.from_raw
        query = (
            "SELECT offset, key, value FROM log WHERE topic_id=? AND partition=? AND offset>=? "
            "ORDER BY offset LIMIT ?"
        )
        last_activity = time.monotonic()
        ids: dict[str, tuple[int, int]] = {}
        while True:
            if len(ids) < len({tp.topic for tp in positions}):
                with self._lock:
                    ids = self._topic_ids()
            seen_version = conn.execute("PRAGMA data_version").fetchone()[0]
            got_any = False
            for tp in sorted(positions):
                info = ids.get(tp.topic)
                if info is None:
                    continue
                tid = info[0]
                pos = positions[tp]
                head = None
                with self._lock:
                    rows = conn.execute(query, (tid, tp.partition, pos, self.batch_rows)).fetchall()
                    if not rows or rows[0][0] != pos:
                        head = conn.execute(
                            "SELECT next_offset FROM heads WHERE topic_id=? AND partition=?",
                            (tid, tp.partition),
                        ).fetchone()
                if rows and rows[0][0] != pos:
                    pos = self._out_of_range(tp, pos, rows[0][0])
                    positions[tp] = pos
                elif not rows and head is not None and pos < head[0]:
                    # Everything from pos to the head is gone; read on from the head.
                    positions[tp] = self._out_of_range(tp, pos, head[0])
                    continue
                if not rows:
                    continue
                got_any = True
                topic, part = tp.topic, tp.partition
                for offset, key, value in rows:
                    yield from_raw(topic, part, offset, value, key)
                positions[tp] = rows[-1][0] + 1
            if got_any:
                last_activity = time.monotonic()
                continue
            if not forever:
                return
            # Idle: wait for another connection to commit, yielding the sentinel regularly.
            while True:
                now = time.monotonic()
                if now - last_activity >= self.idle_timeout:
                    last_activity = now
                    yield None
                    break
                time.sleep(self.poll_interval)
                if conn.execute("PRAGMA data_version").fetchone()[0] != seen_version:
                    break
            ids = {}

    def close(self) -> None:
        with self._lock:
            self._conn.close()
