"""`SQLitePublisher`: appends stubs to the embedded log, one transaction per call."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence

from changefeed import gctune
from changefeed.backends.base import Publisher, key_partition
from changefeed.backends.local.connection import Connector
from changefeed.backends.local.records import (
    BATCH_FORMAT,
    MAX_BATCH_RECORDS,
    encode_batch,
    encode_record,
)
from changefeed.backends.local.schema import ensure_topic
from changefeed.change import ChangeMeta
from changefeed.wire import WireFormat, encoder_for, wire_format


class SQLitePublisher(Publisher):
    """Appends stubs; a call is one transaction, durable when ``publish_many`` returns.

    ``wire`` is the stub format written (None: the log's URL option); the key is the
    document id in every format."""

    _RETENTION_EVERY = 50_000

    def __init__(self, log: Connector, *, wire: WireFormat | str | None = None) -> None:
        self.log = log
        self.wire = log.wire if wire is None else wire_format(wire)
        self._encode = encoder_for(self.wire)
        self._conn = log.connect()
        self._lock = threading.Lock()
        self._since_retention = 0

    def publish(self, topic: str, meta: ChangeMeta) -> None:
        self.publish_many(((topic, meta),))

    def publish_many(self, items: Iterable[tuple[str, ChangeMeta]]) -> None:
        now = time.time()
        with gctune.paused():
            records = []
            encode = self._encode
            if self.wire is WireFormat.CHANGEFEED:
                for topic, meta in items:
                    meta.stamp_unset(now)
                    records.append((topic, meta.document_id, encode(meta)))
            else:
                # Another format is stored as the exact bytes another producer would have
                # written (a ``[key, value]`` element): readers decode it like HQ's own stubs.
                for topic, meta in items:
                    meta.stamp_unset(now)
                    key = meta.document_id
                    records.append((topic, key, encode_record(key, encode(meta))))
        self._append(records, now)

    def append_raw(self, records: Sequence[tuple[str, str, bytes]]) -> None:
        """Append (topic, key, value) records whose value may not be a valid stub, as
        another producer could write them: for tests of how bad records are handled."""
        self._append(
            [(topic, key, encode_record(key, value)) for topic, key, value in records],
            time.time(),
        )

    def _append(self, records: Sequence[tuple[str, str, bytes]], ts: float) -> None:
        """Append (topic, key, array element) records in one transaction."""
        if not records:
            return
        partition_of = key_partition
        # Group by partition first: same key, same partition (`key_partition`, the rule
        # `Backend.partition_for` declares), order kept within it.
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                topics: dict[str, tuple[int, int]] = {}
                groups: dict[tuple[int, int], list[bytes]] = {}
                for topic, key, element in records:
                    info = topics.get(topic)
                    if info is None:
                        info = topics[topic] = ensure_topic(
                            conn, topic, self.log.default_partitions
                        )
                    tid, nparts = info
                    hk = (tid, partition_of(key, nparts))
                    group = groups.get(hk)
                    if group is None:
                        group = groups[hk] = []
                    group.append(element)
                rows = []
                heads = []
                for (tid, part), group in groups.items():
                    head = conn.execute(
                        "SELECT next_offset FROM heads WHERE topic_id=? AND partition=?",
                        (tid, part),
                    ).fetchone()[0]
                    for start in range(0, len(group), MAX_BATCH_RECORDS):
                        chunk = group[start : start + MAX_BATCH_RECORDS]
                        rows.append(
                            (tid, part, head, len(chunk), BATCH_FORMAT, ts, encode_batch(chunk))
                        )
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
