"""The two ways to read a slot: polling with psycopg 3, streaming with psycopg2.

Both keep one contract, `SlotReader`, opened alike (`OpenReader`): whole transactions in
commit order as wal2json (format-version 2) rows, with the position to confirm once the log
acknowledged what those rows became. The relay picks one and never asks which it has.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import psycopg

from changefeed.lifecycle import StopFlag
from changefeed.sources.postgres_cdc.config import CDCError
from changefeed.sources.postgres_cdc.server import connect, plugin_error, slot_error

# wal2json: one JSON object per change, no column types (smaller, faster to parse).
_PEEK = (
    "SELECT lsn::text, data FROM pg_logical_slot_peek_changes("
    "%s, NULL, %s, 'format-version', '2', 'include-types', '0', 'add-tables', %s)"
)


class Batch(NamedTuple):
    """What one read returns."""

    rows: list[str]
    """wal2json rows of whole transactions."""
    lsn: Any
    """The position to confirm after publishing them (None when there are no rows)."""
    drained: bool
    """The read reached the end of the WAL as of now (only a poller can know)."""


class SlotReader(Protocol):
    """Reads a replication slot: the one contract of the polling and streaming readers."""

    mode: str
    """``poll`` or ``stream``, for the relay's health."""

    def read(self, max_rows: int, wait: float) -> Batch:
        """Whole transactions, up to about ``max_rows`` changes, waiting at most ``wait``
        seconds for the first one."""
        ...

    def confirm(self, lsn: Any) -> None:
        """Let the server forget everything up to ``lsn`` (call only once it is published)."""
        ...

    def close(self) -> None: ...


OpenReader = Callable[[str, str, str, StopFlag], SlotReader]
"""How a reader is opened: ``(dsn, slot, add_tables, stop)``; ``add_tables`` is wal2json's
table filter, ``stop`` ends a wait early."""

_WAL2JSON_OPTIONS = {"format-version": "2", "include-types": "0"}


class PollingReader:
    """``pg_logical_slot_peek_changes`` + ``pg_replication_slot_advance`` with psycopg 3.

    Exact about "drained" (it reads up to the current WAL end), so ``--once`` uses it. Each
    peek decodes again from the slot's restart point, which trails by up to ~15 s of WAL.
    A peek returns at once (it never uses ``wait`` or ``stop``): the relay sleeps between
    peeks.
    """

    mode = "poll"

    def __init__(self, dsn: str, slot: str, add_tables: str, stop: StopFlag) -> None:
        self.slot = slot
        self.add_tables = add_tables
        self.conn = connect(dsn)

    def read(self, max_rows: int, wait: float) -> Batch:
        try:
            rows = self.conn.execute(_PEEK, (self.slot, max_rows, self.add_tables)).fetchall()
        except psycopg.Error as exc:
            raise slot_error(exc, self.slot) or plugin_error(exc) or exc from None
        lsn = rows[-1][0] if rows else None
        return Batch([r[1] for r in rows], lsn, drained=len(rows) < max_rows)

    def confirm(self, lsn: Any) -> None:
        self.conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (self.slot, lsn))

    def close(self) -> None:
        self.conn.close()


class StreamingReader:
    """The replication protocol with psycopg2 (extra ``cdc``): one decoding session.

    Changes arrive as they commit, and nothing is decoded twice. Confirmation is feedback
    sent at once (``force``), so a restart resumes right after what was published.
    """

    mode = "stream"

    def __init__(self, dsn: str, slot: str, add_tables: str, stop: StopFlag) -> None:
        import psycopg2
        import psycopg2.extras

        self.slot = slot
        self.stop = stop
        try:
            self.conn = psycopg2.connect(
                dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection
            )
        except psycopg2.OperationalError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "failed"
            raise CDCError(f"cannot open a replication connection: {first}") from None
        self.cur = self.conn.cursor()
        try:
            self.cur.start_replication(
                slot_name=slot,
                decode=True,
                options={**_WAL2JSON_OPTIONS, "add-tables": add_tables},
                status_interval=10,
            )
        except psycopg2.Error as exc:
            error = slot_error(exc, slot)
            if error is None:
                raise
            self.conn.close()
            raise error from None
        self._partial: list[tuple[int, str]] = []

    def read(self, max_rows: int, wait: float) -> Batch:
        """Whole transactions that arrived, up to about ``max_rows``, waiting up to ``wait``
        for the first one. A transaction still arriving is kept for the next call. Never
        ``drained``: a stream cannot tell that nothing more is committed."""
        import select

        rows = self._partial
        complete = 0
        deadline = time.monotonic() + wait
        while True:
            msg = self.cur.read_message()
            if msg is not None:
                rows.append((msg.data_start, msg.payload))
                if msg.payload == '{"action":"C"}':
                    complete = len(rows)
                    if complete >= max_rows:
                        break
                continue
            remaining = deadline - time.monotonic()
            if complete or remaining <= 0 or self.stop.is_set():
                break
            select.select([self.cur], [], [], min(remaining, 0.5))
        self._partial = rows[complete:]
        done = rows[:complete]
        return Batch([data for _, data in done], done[-1][0] if done else None, drained=False)

    def confirm(self, lsn: Any) -> None:
        self.cur.send_feedback(write_lsn=lsn, flush_lsn=lsn, force=True)

    def close(self) -> None:
        self.conn.close()


def streaming_available() -> bool:
    """Whether psycopg2 (the ``cdc`` extra) is installed for the streaming reader."""
    try:
        import psycopg2.extras  # noqa: F401
    except ImportError:
        return False
    return True
