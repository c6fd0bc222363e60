"""The embedded log: topics and partitions in one SQLite file, the zero-setup default.

Offsets are dense per partition (0, 1, 2, ...), like Kafka's, so a gap in front of a
position can only mean retention removed it. Like Kafka, records are stored in batches: one
row holds the records one publish call appended to one partition, so a publisher pays one
B-tree insert per batch instead of per stub, and a reader decodes a batch with one JSON
parse. WAL mode lets one writer and many readers in several processes share the file;
writers take the lock with ``BEGIN IMMEDIATE`` and assign offsets inside that transaction,
so concurrent publishers never collide.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import repeat
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from changefeed import gctune
from changefeed.backends.base import (
    Backend,
    BatchedChangeFeed,
    ChangeList,
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


def partition_for(key: str, partitions: int) -> int:
    """Same key, same partition: CRC32 of the key, as librdkafka's default partitioner."""
    return zlib.crc32(key.encode()) % partitions


FORMAT_RAW = 0
"""Batch payload: record count key/value lengths (uint32) then the keys and values."""
FORMAT_JSON = 1
"""Batch payload: one JSON array of stub objects; each record's key is its document_id."""

MAX_BATCH_RECORDS = 2000
"""Records per stored batch: big enough to amortise, small enough to seek into cheaply."""


def encode_raw_batch(records: Sequence[tuple[str, bytes]]) -> bytes:
    lengths = array("I")
    parts: list[bytes] = []
    for key, value in records:
        kb = key.encode()
        lengths.append(len(kb))
        lengths.append(len(value))
        parts.append(kb)
        parts.append(value)
    return lengths.tobytes() + b"".join(parts)


def decode_raw_batch(count: int, payload: bytes) -> list[tuple[str, bytes]]:
    lengths = array("I")
    header = 8 * count
    lengths.frombytes(payload[:header])
    out = []
    pos = header
    for i in range(0, 2 * count, 2):
        klen, vlen = lengths[i], lengths[i + 1]
        key = payload[pos : pos + klen].decode()
        pos += klen
        out.append((key, payload[pos : pos + vlen]))
        pos += vlen
    return out


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
        read_batches: int = 4,
    ) -> SQLiteChangeFeed:
        return SQLiteChangeFeed(
            self,
            topics,
            idle_timeout=idle_timeout,
            strict=strict,
            poll_interval=poll_interval,
            read_batches=read_batches,
        )

    def admin(self) -> SQLiteAdmin:
        return SQLiteAdmin(self)

    def apply_retention(self, now: float | None = None) -> int:
        """Remove record batches older than the retention age or wholly beyond the retention
        count (whole batches, as Kafka removes whole segments). Returns batches removed."""
        if self.retention_seconds is None and self.retention_count is None:
            return 0
        removed = 0
        conn = self.connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            if self.retention_seconds is not None:
                cutoff = (time.time() if now is None else now) - self.retention_seconds
                removed += conn.execute("DELETE FROM batches WHERE ts < ?", (cutoff,)).rowcount
            if self.retention_count is not None:
                for tid, part, head in conn.execute(
                    "SELECT topic_id, partition, next_offset FROM heads"
                ).fetchall():
                    removed += conn.execute(
                        "DELETE FROM batches WHERE topic_id=? AND partition=? "
                        "AND base_offset + count <= ?",
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
    """Appends stubs; a call is one transaction, durable when ``publish_many`` returns."""

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
        with gctune.paused():
            records = []
            for topic, meta in items:
                meta.stamp_unset(now)
                records.append((topic, meta.document_id, meta.encode()))
        self._append(records, FORMAT_JSON, now)

    def append_raw(self, records: Sequence[tuple[str, str, bytes]]) -> None:
        """Append already-encoded (topic, key, value) records, valid stubs or not."""
        self._append(records, FORMAT_RAW, time.time())

    def _append(self, records: Sequence[tuple[str, str, Any]], fmt: int, ts: float) -> None:
        if not records:
            return
        crc32 = zlib.crc32
        # Group by partition first: same key, same partition, order kept within it.
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                topics: dict[str, tuple[int, int]] = {}
                groups: dict[tuple[int, int], list[tuple[str, Any]]] = {}
                for topic, key, value in records:
                    info = topics.get(topic)
                    if info is None:
                        info = topics[topic] = _ensure_topic(
                            conn, topic, self.log.default_partitions
                        )
                    tid, nparts = info
                    hk = (tid, crc32(key.encode()) % nparts if nparts > 1 else 0)
                    group = groups.get(hk)
                    if group is None:
                        group = groups[hk] = []
                    group.append((key, value))
                rows = []
                heads = []
                for (tid, part), group in groups.items():
                    head = conn.execute(
                        "SELECT next_offset FROM heads WHERE topic_id=? AND partition=?",
                        (tid, part),
                    ).fetchone()[0]
                    for start in range(0, len(group), MAX_BATCH_RECORDS):
                        chunk = group[start : start + MAX_BATCH_RECORDS]
                        if fmt == FORMAT_JSON:
                            # One JSON array of the encoded stubs.
                            payload = b"[" + b",".join([value for _, value in chunk]) + b"]"
                        else:
                            payload = encode_raw_batch(chunk)
                        rows.append((tid, part, head, len(chunk), fmt, ts, payload))
                        head += len(chunk)
                    heads.append((head, tid, part))
                conn.executemany(
                    "INSERT INTO batches (topic_id, partition, base_offset, count, format, ts, "
                    "payload) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                conn.executemany(
                    "UPDATE heads SET next_offset=? WHERE topic_id=? AND partition=?", heads
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


class SQLiteChangeFeed(BatchedChangeFeed):
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
        read_batches: int = 4,
    ) -> None:
        if not topics:
            raise ValueError("a change feed needs at least one topic")
        self.log = log
        self.topics = tuple(topic_name(t) for t in topics)
        self.idle_timeout = idle_timeout
        self.strict = strict
        self.poll_interval = poll_interval
        self.read_batches = read_batches
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
                    "SELECT MIN(base_offset) FROM batches WHERE topic_id=? AND partition=?",
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

    def _read(
        self, tid: int, partition: int, pos: int
    ) -> tuple[list[tuple[int, int, int, bytes]], int]:
        """Batches holding offsets from ``pos`` on (the first may start before it) and the
        head, read in one snapshot: a head read separately could run ahead of the batches
        and make a fresh append look like a gap."""
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN")
            try:
                rows = conn.execute(
                    "SELECT base_offset, count, format, payload FROM batches "
                    "WHERE topic_id=?1 AND partition=?2 AND base_offset >= ("
                    "  SELECT COALESCE(MAX(base_offset), 0) FROM batches"
                    "  WHERE topic_id=?1 AND partition=?2 AND base_offset <= ?3"
                    ") ORDER BY base_offset LIMIT ?4",
                    (tid, partition, pos, self.read_batches),
                ).fetchall()
                head = conn.execute(
                    "SELECT next_offset FROM heads WHERE topic_id=? AND partition=?",
                    (tid, partition),
                ).fetchone()
            finally:
                conn.execute("COMMIT")
        return rows, int(head[0]) if head else 0

    def iter_change_batches(
        self, since: Mapping[TopicPartition, int], forever: bool = False
    ) -> Iterator[list[Change] | None]:
        """`iter_changes`, one list per stored record batch: pillows take a list at a time."""
        positions = dict(since)
        conn = self._conn
        from_raw = Change.from_raw
        from_dict = Change.from_dict
        decoded = Change.decoded
        decode_array = ChangeMeta.decode_array
        last_activity = time.monotonic()
        ids: dict[str, tuple[int, int]] = {}
        while True:
            if len(ids) < len({tp.topic for tp in positions}):
                with self._lock:
                    ids = self._topic_ids()
            with self._lock:
                seen_version = conn.execute("PRAGMA data_version").fetchone()[0]
            got_any = False
            for tp in sorted(positions):
                info = ids.get(tp.topic)
                if info is None:
                    continue
                tid = info[0]
                pos = positions[tp]
                batches, head = self._read(tid, tp.partition, pos)
                # Skip batches wholly before pos (the one holding pos-1 when pos is a boundary).
                while batches and batches[0][0] + batches[0][1] <= pos:
                    batches.pop(0)
                if not batches:
                    if pos < head:
                        # Everything from pos to the head is gone; read on from the head.
                        positions[tp] = self._out_of_range(tp, pos, head)
                    continue
                if batches[0][0] > pos:
                    pos = positions[tp] = self._out_of_range(tp, pos, batches[0][0])
                got_any = True
                topic, part = tp.topic, tp.partition
                for base, count, fmt, payload in batches:
                    skip = pos - base if pos > base else 0
                    end = {tp: base + count}
                    if fmt == FORMAT_JSON:
                        metas = decode_array(payload)
                        if metas is not None:  # valid stubs (the usual case): built in C loops
                            yield ChangeList(
                                map(
                                    decoded,
                                    repeat(topic),
                                    repeat(part),
                                    range(base + skip, base + count),
                                    metas[skip:] if skip else metas,
                                ),
                                end,
                            )
                        else:
                            values = orjson.loads(payload)
                            yield ChangeList(
                                (
                                    from_dict(topic, part, base + i, values[i])
                                    for i in range(skip, count)
                                ),
                                end,
                            )
                    else:
                        records = decode_raw_batch(count, payload)
                        yield ChangeList(
                            (
                                from_raw(topic, part, base + i, records[i][1], records[i][0])
                                for i in range(skip, count)
                            ),
                            end,
                        )
                    pos = positions[tp] = base + count
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
                with self._lock:
                    version = conn.execute("PRAGMA data_version").fetchone()[0]
                if version != seen_version:
                    break
            ids = {}

    def close(self) -> None:
        with self._lock:
            self._conn.close()
