"""`SQLiteLog`: the embedded log as a `Backend`, made from a ``sqlite:///`` URL; it opens
the connections its publishers, feeds and admin use and applies retention."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from changefeed.backends.base import Backend
from changefeed.backends.local.admin import SQLiteAdmin
from changefeed.backends.local.feed import SQLiteChangeFeed
from changefeed.backends.local.publisher import SQLitePublisher
from changefeed.backends.local.retention import remove_expired
from changefeed.backends.local.schema import SCHEMA


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
            conn.executescript(SCHEMA)

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
        cutoff = None
        if self.retention_seconds is not None:
            cutoff = (time.time() if now is None else now) - self.retention_seconds
        conn = self.connect()
        try:
            return remove_expired(conn, cutoff=cutoff, keep_count=self.retention_count)
        finally:
            conn.close()
