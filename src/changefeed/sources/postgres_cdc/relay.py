"""`PostgresCDC`: the relay from a replication slot to the log, and `add_cdc_relay`."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from changefeed.backends.base import Publisher
from changefeed.backoff import Backoff
from changefeed.change import ChangeMeta
from changefeed.identifiers import object_name, topic_name
from changefeed.sources.host import SourceHost
from changefeed.sources.postgres_cdc.config import (
    PLUGIN,
    CDCError,
    CDCTable,
    libpq_dsn,
    slot_name,
)
from changefeed.sources.postgres_cdc.readers import (
    OpenReader,
    PollingReader,
    SlotReader,
    StreamingReader,
    streaming_available,
)
from changefeed.sources.postgres_cdc.server import check_server, check_table, connect, retryable
from changefeed.sources.postgres_cdc.slots import create_slot, slot_status
from changefeed.sources.relay import Relay, RelayBatch, RelayStats
from changefeed.topics import TopicRouter

log = logging.getLogger("changefeed.sources.postgres_cdc")


@dataclass(slots=True)
class CDCStats(RelayStats):
    transactions: int = 0
    truncates: int = 0
    last_lsn: str | None = None
    """The last position confirmed to the slot."""


class PostgresCDC(Relay):
    """Publishes stubs for the committed changes of ``tables`` from replication slot ``slot``.

    One batch: read whole transactions (about ``batch_size`` changes at most), publish the
    stubs of configured tables, ``flush`` the publisher, then confirm the slot up to the
    last commit read. Stubs are routed by document type with ``router``, unless the table
    or ``topic`` names one. The loop, backoff after failures and health come from `Relay`;
    a slot, table or plugin that does not exist (by SQLSTATE) ends the run instead.

    ``mode``: ``stream`` follows the slot over the replication protocol (psycopg2, the
    ``cdc`` extra): low latency, each change decoded once. ``poll`` peeks every
    ``poll_interval`` with psycopg 3 alone. ``auto`` streams when psycopg2 is installed.
    ``run(forever=False)`` (drain and stop) always polls: only a peek knows the slot is
    drained. With ``create_slot``, `bootstrap` creates a missing slot.
    """

    kind = "cdc-relay"

    def __init__(
        self,
        dsn: str,
        slot: str,
        tables: Sequence[CDCTable],
        publisher: Publisher,
        *,
        router: TopicRouter | None = None,
        topic: str | None = None,
        batch_size: int = 5000,
        poll_interval: float = 0.05,
        mode: str = "auto",
        name: str | None = None,
        create_slot: bool = False,
        backoff: Backoff | None = None,
    ) -> None:
        if not tables:
            raise CDCError("CDC needs at least one table")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if mode not in ("auto", "poll", "stream"):
            raise CDCError(f"unknown CDC mode {mode!r}: use auto, poll or stream")
        if mode == "stream" and not streaming_available():
            raise CDCError("streaming needs psycopg2: pip install 'changefeed[cdc]'")
        self.dsn = libpq_dsn(dsn)
        self.slot = slot_name(slot)
        self.stats: CDCStats
        super().__init__(
            name or f"cdc-{self.slot}",
            poll_interval=poll_interval,
            backoff=backoff,
            stats=CDCStats(),
        )
        self.tables = {(t.schema, t.table): t for t in tables}
        if len(self.tables) != len(tables):
            raise CDCError("a table is configured twice")
        self.publisher = publisher
        self.router = router or TopicRouter()
        self.topic = None if topic is None else topic_name(topic)
        self.batch_size = batch_size
        self.mode = mode
        self.create_slot = create_slot
        self._add_tables = ",".join(t.qualified for t in tables)
        self._reader: SlotReader | None = None

    def bootstrap(self) -> None:
        """Create the slot when asked to (``create_slot``) and it is missing. Not by default:
        from its creation on, a slot keeps WAL on the server until it is read."""
        if self.create_slot and not slot_status(self.dsn, self.slot)["exists"]:
            create_slot(self.dsn, self.slot)

    def check(self) -> None:
        """Fail early, with what to do: server, slot and every table."""
        with connect(self.dsn) as conn:
            check_server(conn)
            row = conn.execute(
                "SELECT plugin, database, current_database() FROM pg_replication_slots "
                "WHERE slot_name = %s",
                (self.slot,),
            ).fetchone()
            if row is None:
                raise CDCError(
                    f"replication slot {self.slot!r} does not exist "
                    f"(create it: changefeed cdc slot create {self.slot})"
                )
            plugin, database, current = row
            if plugin != PLUGIN:
                raise CDCError(f"replication slot {self.slot!r} uses {plugin!r}, not {PLUGIN}")
            if database != current:
                raise CDCError(
                    f"replication slot {self.slot!r} belongs to database {database!r}, "
                    f"not {current!r}"
                )
            for table in self.tables.values():
                check_table(conn, table)

    def _stubs(self, rows: Iterable[str]) -> list[tuple[str, ChangeMeta]]:
        items: list[tuple[str, ChangeMeta]] = []
        tables = self.tables
        loads = orjson.loads
        for data in rows:
            change = loads(data)
            action = change["action"]
            if action in ("B", "M"):
                continue
            if action == "C":
                self.stats.transactions += 1
                continue
            table = tables.get((change.get("schema"), change.get("table")))
            if table is None:
                continue
            if action == "T":
                self.stats.truncates += 1
                log.warning(
                    "TRUNCATE of %s is not published as stubs; reindex its pillows",
                    table.qualified,
                )
                continue
            if action == "D":
                old = {c["name"]: c["value"] for c in change.get("identity", ())}
                metas = [table.stub(old, True)]
            else:
                new = {c["name"]: c["value"] for c in change["columns"]}
                metas = [table.stub(new, False)]
                if action == "U" and "identity" in change:
                    old = {c["name"]: c["value"] for c in change["identity"]}
                    old_id = old.get(table.id_column)
                    if old_id is not None and str(old_id) != metas[0].document_id:
                        # The id itself changed: the old document is gone.
                        metas.insert(0, table.stub(old, True))
            for meta in metas:
                topic = table.topic or self.topic or self.router.topic_for(meta)
                items.append((topic, meta))
        return items

    def _publish(self, rows: list[str], lsn: Any) -> int:
        """Publish a batch's stubs, then (only then) let the server forget its changes."""
        assert self._reader is not None
        items = self._stubs(rows)
        if items:
            self.publisher.publish_many(items)
            self.publisher.flush()
        self._reader.confirm(lsn)
        self.stats.last_lsn = str(lsn)
        self.count_batch(len(items))
        return len(items)

    def _open_reader(self, forever: bool) -> SlotReader:
        if self._reader is None:
            stream = forever and (
                self.mode == "stream" or (self.mode == "auto" and streaming_available())
            )
            open_reader: OpenReader = StreamingReader if stream else PollingReader
            self._reader = open_reader(self.dsn, self.slot, self._add_tables, self._stop)
        return self._reader

    def poll_once(self) -> int:
        """Read (peek), publish and confirm one batch; returns how many stubs were published."""
        rows, lsn, _ = self._open_reader(forever=False).read(self.batch_size, wait=0.0)
        return self._publish(rows, lsn) if rows else 0

    # -- the Relay loop's parts --------------------------------------------------------

    def prepare(self) -> None:
        """Fail before the loop when the server, slot or tables cannot work."""
        self.check()

    def relay_batch(self, forever: bool) -> RelayBatch:
        # A stream waits for changes itself (and is never drained: the loop goes on at once);
        # a peek returns at once, drained when it caught up with the WAL.
        wait = max(self.poll_interval, 0.5)
        rows, lsn, drained = self._open_reader(forever).read(self.batch_size, wait)
        published = self._publish(rows, lsn) if rows else 0
        return RelayBatch(len(rows), published, drained)

    def retryable(self, exc: Exception) -> bool:
        """Everything but what does not exist (slot, table, plugin: by SQLSTATE): the slot
        keeps all that is not confirmed, so a retry loses nothing."""
        return retryable(exc)

    def reset(self) -> None:
        self.close()

    def slot_status(self) -> dict[str, Any]:
        """The slot's `slot_status` (a query: lag in bytes, active, confirmed position)."""
        return slot_status(self.dsn, self.slot)

    def health_detail(self) -> dict[str, object]:
        return {
            "slot": self.slot,
            "last_lsn": self.stats.last_lsn,
            "transactions": self.stats.transactions,
            "truncates": self.stats.truncates,
            "mode": "stream" if self._reader and self._reader.mode == "stream" else self.mode,
        }

    def close(self) -> None:
        if self._reader is not None:
            try:
                self._reader.close()
            finally:
                self._reader = None


def add_cdc_relay(
    app: SourceHost,
    name: str,
    dsn: str,
    slot: str,
    tables: Sequence[CDCTable],
    *,
    topic: str | None = None,
    batch_size: int = 5000,
    poll_interval: float = 0.05,
    mode: str = "auto",
    create_slot: bool = False,
    watch_slot: bool = True,
) -> str:
    """Register a CDC relay as one of ``app``'s runnables, so ``changefeed run NAME``, ``run
    --all`` and the supervisor run it like a pillow, publishing with the app's publisher and
    router. With ``watch_slot`` the slot's lag also shows in ``changefeed status``. The
    configuration is validated now, not when the relay first runs. Returns ``name``."""
    object_name(name, "relay name")
    slot_name(slot)
    libpq_dsn(dsn)
    tables = list(tables)
    if not tables:
        raise CDCError("CDC needs at least one table")

    def factory(host: SourceHost) -> PostgresCDC:
        return PostgresCDC(
            dsn,
            slot,
            tables,
            host.publisher(),
            router=host.router,
            topic=topic,
            batch_size=batch_size,
            poll_interval=poll_interval,
            mode=mode,
            name=name,
            create_slot=create_slot,
        )

    app.add_runnable(name, factory)
    if watch_slot:
        app.watch_replication_slot(dsn, slot)
    return name
