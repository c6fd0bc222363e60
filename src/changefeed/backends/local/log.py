"""`SQLiteLog`: the embedded log as a `Backend`, made from a ``sqlite:///`` URL; it opens
the connections its publishers, feeds and admin use and applies retention."""

from __future__ import annotations

import math
import os
import sqlite3
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from changefeed.backends.base import MAX_PARTITIONS, Backend, partition_count
from changefeed.backends.local.admin import SQLiteAdmin
from changefeed.backends.local.feed import SQLiteChangeFeed
from changefeed.backends.local.publisher import SQLitePublisher
from changefeed.backends.local.retention import remove_expired
from changefeed.backends.local.schema import SCHEMA
from changefeed.db import not_created_yet
from changefeed.identifiers import redact_url
from changefeed.wire import WireFormat, wire_format

MAX_RETENTION_COUNT = 2**63 - 1
"""Records a partition may keep: SQLite's integers are signed 64-bit."""


def _retention_seconds(value: float | None) -> float | None:
    """None (keep forever) or a finite positive age: zero, a negative or NaN age would
    remove records no reader has seen yet."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"retention_seconds must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"retention_seconds must be a positive number of seconds, got {value}")
    return float(value)


def _retention_count(value: int | None) -> int | None:
    """None (no bound) or at least one record kept per partition."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"retention_count must be a whole number, got {value!r}")
    if not 1 <= value <= MAX_RETENTION_COUNT:
        raise ValueError(
            f"retention_count must be between 1 and {MAX_RETENTION_COUNT}, got {value}"
        )
    return value


class SQLiteLog(Backend):
    """An embedded, durable, multi-process log in one SQLite file.

    URL form: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` with optional
    query options ``partitions`` (for auto-created topics, 1..10000), ``retention_seconds``
    (positive), ``retention_count`` (per partition, at least 1), ``synchronous`` (``normal``
    or ``full``) and ``wire`` (the stub format publishers write: ``changefeed`` or ``hq``).

    ``create=False`` opens a file that does not exist yet as an empty log held in memory,
    creating nothing on disk: commands that only look (``changefeed status``) must not leave
    a log behind where a user merely asked.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        partitions: int = 1,
        retention_seconds: float | None = None,
        retention_count: int | None = None,
        synchronous: str = "normal",
        wire: WireFormat | str | None = None,
        url: str | None = None,
        create: bool = True,
    ) -> None:
        partition_count(partitions)
        if synchronous.lower() not in ("normal", "full"):
            raise ValueError("synchronous must be 'normal' or 'full'")
        self.path = Path(path)
        self.default_partitions = partitions
        self.retention_seconds = _retention_seconds(retention_seconds)
        self.retention_count = _retention_count(retention_count)
        self.synchronous = synchronous.upper()
        self.wire = wire_format(wire)
        self.url = url or f"sqlite:///{self.path}"
        self._in_memory: str | None = None
        self._keeper: sqlite3.Connection | None = None
        if not create and not_created_yet(self.path):
            # A shared in-memory database lives while one connection to it is open.
            self._in_memory = (
                f"file:changefeed-empty-log-{uuid.uuid4().hex}?mode=memory&cache=shared"
            )
            self._keeper = self.connect()
            self._keeper.executescript(SCHEMA)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as conn:
            conn.executescript(SCHEMA)

    @classmethod
    def from_url(cls, url: str, *, create: bool = True) -> SQLiteLog:
        parts = urlsplit(url)
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if not path:
            raise ValueError(f"sqlite log URL needs a file path: {redact_url(url)!r}")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        allowed = {"partitions", "retention_seconds", "retention_count", "synchronous", "wire"}
        unknown = set(query) - allowed
        if unknown:
            raise ValueError(f"unknown sqlite log option(s): {', '.join(sorted(unknown))}")
        try:
            partitions = _url_int(query, "partitions", MAX_PARTITIONS)
            return cls(
                path,
                partitions=1 if partitions is None else partitions,
                retention_seconds=float(query["retention_seconds"])
                if "retention_seconds" in query
                else None,
                retention_count=_url_int(query, "retention_count", MAX_RETENTION_COUNT),
                synchronous=query.get("synchronous", "normal"),
                wire=query.get("wire"),
                url=url,
                create=create,
            )
        except ValueError as exc:
            raise ValueError(f"bad sqlite log URL {redact_url(url)!r}: {exc}") from None

    def connect(self) -> sqlite3.Connection:
        if self._in_memory is not None:
            return sqlite3.connect(
                self._in_memory, isolation_level=None, check_same_thread=False, uri=True
            )
        conn = sqlite3.connect(
            self.path, timeout=60.0, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA busy_timeout=60000")
        return conn

    def close(self) -> None:
        if self._keeper is not None:  # the empty in-memory log goes with it
            self._keeper.close()
            self._keeper = None

    def publisher(self, *, wire: WireFormat | str | None = None) -> SQLitePublisher:
        """A publisher writing ``wire`` (None: the URL's ``wire=``, else ``changefeed``)."""
        return SQLitePublisher(self, wire=wire)

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
        cutoff = None
        if self.retention_seconds is not None:
            cutoff = (time.time() if now is None else now) - self.retention_seconds
        conn = self.connect()
        try:
            return remove_expired(conn, cutoff=cutoff, keep_count=self.retention_count)
        finally:
            conn.close()


def _url_int(query: dict[str, str], name: str, most: int) -> int | None:
    """An integer URL option; its digits are bounded before conversion, so a value beyond
    64 bits is refused with the option's name instead of being parsed."""
    text = query.get(name)
    if text is None:
        return None
    digits = text.strip().lstrip("+-")
    if not digits.isdigit() or len(digits) > len(str(most)):
        raise ValueError(f"{name} must be a whole number of at most {most}, got {text!r}")
    return int(text)
