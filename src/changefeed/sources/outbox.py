"""Transactional outbox: stubs written in the application's own transaction, relayed later.

Publishing after commit loses the change when the process dies between the two steps;
publishing before commit announces changes that may roll back. The outbox avoids both: the
application inserts the stub into an outbox table *in the same transaction* as its data
(`write_change`), so the stub exists exactly when the data does, and the `OutboxRelay` moves
committed rows to the log and then deletes (or marks) them. A crash of the relay between
publishing and deleting publishes those rows again: at least once, never lost.

Commit order, not id order
--------------------------
Ids are assigned at insert time, not at commit time: a transaction holding id 10 may commit
after another one committed id 11. A relay that advanced a high-water mark past 11 would
skip 10 forever. This relay keeps no high-water mark: each poll reads the rows *visible now*
(committed) in id order, publishes them and deletes exactly those ids (never a range), so a
late-committing lower id is simply picked up by the next poll. Rows therefore reach the log
in the order they became visible, which is commit order up to one poll's batch.

Within one document the order is what matters (stubs are keyed by document id), and it is
kept when the application changes the document *before* it writes the stub: the row lock the
first transaction holds on the document makes a second writer wait until that commit, so the
second stub gets the higher id and becomes visible later. Consumers fetch the current
document for every stub anyway, so even a misordered pair converges.

One relay per outbox is active at a time: on PostgreSQL it holds a session advisory lock,
and a second relay waits as a hot standby until the first one's connection goes away.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from changefeed.backends.base import Publisher
from changefeed.backoff import Backoff
from changefeed.change import ChangeMeta
from changefeed.db import create_tables, make_engine
from changefeed.identifiers import object_name, sql_identifier, topic_name
from changefeed.sources.host import SourceHost
from changefeed.sources.relay import Relay, RelayBatch, RelayStats
from changefeed.topics import TopicRouter

log = logging.getLogger("changefeed.sources.outbox")

DEFAULT_TABLE = "changefeed_outbox"

Executor = sa.Connection | Session
"""Where `write_change` inserts: the application's SQLAlchemy connection or ORM session."""


class RelayBusyError(RuntimeError):
    """Another relay holds this outbox (only one may be active at a time)."""


class Outbox:
    """The outbox table of one database (SQLAlchemy Core), validated name and optional schema.

    Columns: ``id`` (bigserial: insert order), ``topic`` (NULL: route by document type at
    relay time), ``key`` (the document id), ``payload`` (the encoded stub), ``created_at``,
    ``published_at`` (set in mark mode) and ``error`` (why a row could not be published).
    """

    def __init__(
        self,
        table: str = DEFAULT_TABLE,
        *,
        schema: str | None = None,
        metadata: sa.MetaData | None = None,
    ) -> None:
        name = sql_identifier(table, "outbox table name")
        if schema is not None:
            sql_identifier(schema, "schema")
        metadata = metadata if metadata is not None else sa.MetaData()
        self.table = sa.Table(
            name,
            metadata,
            sa.Column(
                "id",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                primary_key=True,
                autoincrement=True,
            ),
            sa.Column("topic", sa.String(249), nullable=True),
            sa.Column("key", sa.String(255), nullable=False),
            sa.Column("payload", sa.Text(), nullable=False),
            sa.Column(
                "created_at",
                sa.DateTime(timezone=True),
                nullable=False,
                server_default=sa.func.now(),
            ),
            sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("error", sa.Text(), nullable=True),
            schema=schema,
        )
        pending = sa.and_(self.table.c.published_at.is_(None), self.table.c.error.is_(None))
        # Mark mode keeps published rows: this index lets the relay skip them.
        sa.Index(
            f"{name[:54]}_pending",
            self.table.c.id,
            postgresql_where=pending,
            sqlite_where=pending,
        )
        self._insert = self.table.insert()

    @property
    def name(self) -> str:
        return self.table.fullname

    def create(self, engine: sa.Engine | str) -> None:
        """Create the table and its index if missing (a migration tool may do this instead)."""
        create_tables(make_engine(engine), self.table.metadata, [self.table])

    def row(self, meta: ChangeMeta, topic: str | None = None) -> dict[str, Any]:
        """The values of one outbox row for a stub."""
        return {
            "topic": None if topic is None else topic_name(topic),
            "key": meta.document_id,
            "payload": meta.encode().decode(),
        }

    def write(self, conn: Executor, meta: ChangeMeta, topic: str | None = None) -> None:
        """Insert one stub in the caller's transaction (commit is the caller's)."""
        conn.execute(self._insert, [self.row(meta, topic)])

    def write_many(
        self, conn: Executor, items: Iterable[ChangeMeta | tuple[str, ChangeMeta]]
    ) -> int:
        """Insert several stubs (or (topic, stub) pairs) in one round trip; returns how many."""
        rows = [
            self.row(item[1], item[0]) if isinstance(item, tuple) else self.row(item)
            for item in items
        ]
        if rows:
            conn.execute(self._insert, rows)
        return len(rows)


DEFAULT_OUTBOX = Outbox()


def write_change(
    conn: Executor, meta: ChangeMeta, topic: str | None = None, *, outbox: Outbox | None = None
) -> None:
    """Record a change stub in the outbox, inside the application's open transaction.

    Call it *after* changing the document, in the same transaction, so the stub commits or
    rolls back with the data and concurrent writers of one document stay in order (see the
    module docs). Without ``topic`` the relay routes by document type.
    """
    (outbox or DEFAULT_OUTBOX).write(conn, meta, topic)


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """What waits in the outbox: pending rows, the oldest one's age, rows that failed."""

    table: str
    pending: int
    oldest_age: float | None
    """Seconds since the oldest pending row was written (None: nothing pending)."""
    failed: int
    published_kept: int
    """Rows kept after publishing (mark mode) and not yet purged."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "pending": self.pending,
            "oldest_age": self.oldest_age,
            "failed": self.failed,
            "published_kept": self.published_kept,
        }


def _as_utc(value: dt.datetime) -> dt.datetime:
    # SQLite's CURRENT_TIMESTAMP is UTC without a zone.
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def outbox_status(engine: sa.Engine | str, outbox: Outbox | None = None) -> OutboxStatus:
    """Counts for ``changefeed outbox status``, metrics and dashboards."""
    t = (outbox or DEFAULT_OUTBOX).table
    engine = make_engine(engine)
    waiting = sa.and_(t.c.published_at.is_(None), t.c.error.is_(None))
    query = sa.select(
        sa.func.count().filter(waiting),
        sa.func.min(t.c.created_at).filter(waiting),
        sa.func.count().filter(t.c.error.is_not(None)),
        sa.func.count().filter(t.c.published_at.is_not(None)),
    )
    with engine.connect() as conn:
        pending, oldest, failed, kept = conn.execute(query).one()
    age = None
    if oldest is not None:
        age = max(0.0, (dt.datetime.now(dt.UTC) - _as_utc(oldest)).total_seconds())
    return OutboxStatus(t.fullname, int(pending), age, int(failed), int(kept))


@dataclass(slots=True)
class OutboxStats(RelayStats):
    failed_rows: int = 0
    """Rows flagged with an error (kept in the outbox for an operator)."""


class OutboxRelay(Relay):
    """Moves committed outbox rows to the log, in commit order, at least once.

    One poll: read up to ``batch_size`` visible rows in id order, publish them, wait until
    the log acknowledged them (``flush``), then delete them (or set ``published_at`` when
    ``delete=False``). A poll that found rows is followed by the next one at once; an empty
    poll sleeps ``poll_interval``, which bounds the commit-to-log latency of a quiet outbox.
    The loop, backoff after failures and health come from `Relay`.
    """

    kind = "outbox-relay"

    def __init__(
        self,
        engine: sa.Engine | str,
        publisher: Publisher,
        *,
        outbox: Outbox | None = None,
        router: TopicRouter | None = None,
        batch_size: int = 1000,
        poll_interval: float = 0.05,
        delete: bool = True,
        name: str | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.outbox = outbox or DEFAULT_OUTBOX
        self.stats: OutboxStats
        super().__init__(
            name or f"outbox-relay-{self.outbox.name}",
            poll_interval=poll_interval,
            backoff=backoff,
            stats=OutboxStats(),
        )
        self.engine = make_engine(engine)
        self.publisher = publisher
        self.router = router or TopicRouter()
        self.batch_size = batch_size
        self.delete = delete
        self._conn: sa.Connection | None = None
        self._postgres = self.engine.dialect.name == "postgresql"
        t = self.outbox.table
        self._select = (
            sa.select(t.c.id, t.c.topic, t.c.key, t.c.payload)
            .where(t.c.published_at.is_(None), t.c.error.is_(None))
            .order_by(t.c.id)
            .limit(self.batch_size)
        )
        ids: Any
        if self._postgres:  # one array parameter instead of one parameter per id
            ids = t.c.id == sa.func.any(sa.bindparam("ids", type_=postgresql.ARRAY(sa.BigInteger)))
        else:
            ids = t.c.id.in_(sa.bindparam("ids", expanding=True))
        self._done = (
            t.delete().where(ids)
            if delete
            else t.update().where(ids).values(published_at=sa.func.now())
        )

    # -- the single-active-relay lock --------------------------------------------------

    def _lock_name(self) -> str:
        return f"changefeed.outbox:{self.outbox.name}"

    def _connect(self, wait: bool) -> sa.Connection | None:
        """Our connection, holding the relay lock; None if stopped while standing by."""
        if self._conn is not None:
            return self._conn
        announced = False
        while not self._stop.is_set():
            conn = self.engine.connect()
            if not self._postgres:
                self._conn = conn
                return conn
            got = conn.execute(
                sa.select(sa.func.pg_try_advisory_lock(sa.func.hashtext(self._lock_name())))
            ).scalar()
            conn.commit()
            if got:
                if announced:
                    log.info("outbox %s: lock acquired, relaying", self.outbox.name)
                self._conn = conn
                return conn
            conn.close()
            if not wait:
                raise RelayBusyError(f"another relay is active on outbox {self.outbox.name}")
            if not announced:
                log.info("outbox %s: another relay is active; standing by", self.outbox.name)
                announced = True
            self._stop.sleep(max(self.poll_interval, 0.5))
        return None

    def _disconnect(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()  # closing the session releases the advisory lock
            finally:
                self._conn = None

    # -- relaying ----------------------------------------------------------------------

    def relay_once(self, *, wait: bool = False) -> int:
        """Relay one batch; returns how many stubs were published."""
        return self._relay(wait).published

    def relay_batch(self, forever: bool) -> RelayBatch:
        """One poll for `Relay.run`: a standby waits for the lock only when running forever."""
        return self._relay(wait=forever)

    def retryable(self, exc: Exception) -> bool:
        """Another active relay is not a failure to retry: ``--once`` reports it."""
        return not isinstance(exc, RelayBusyError)

    def _relay(self, wait: bool) -> RelayBatch:
        conn = self._connect(wait)
        if conn is None:
            return RelayBatch(0, 0, drained=True)
        try:
            return self._relay_batch(conn)
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated or conn.invalidated:
                self._disconnect()  # reconnect (and re-take the lock) next time
            raise

    def _relay_batch(self, conn: sa.Connection) -> RelayBatch:
        with conn.begin():
            rows = conn.execute(self._select).all()
        if not rows:
            return RelayBatch(0, 0, drained=True)
        items: list[tuple[str, ChangeMeta]] = []
        ids: list[int] = []
        bad: list[tuple[int, str]] = []
        topic_for = self.router.topic_for
        decode = ChangeMeta.decode
        for row_id, topic, _key, payload in rows:
            try:
                meta = decode(payload)
                items.append((topic_name(topic) if topic else topic_for(meta), meta))
                ids.append(row_id)
            except ValueError as exc:  # InvalidChangeError is one
                bad.append((row_id, str(exc)))
        if items:
            self.publisher.publish_many(items)
            self.publisher.flush()
        with conn.begin():
            if ids:
                conn.execute(self._done, {"ids": ids})
            if bad:
                # Never dropped silently: kept, flagged with the reason, for an operator.
                t = self.outbox.table
                conn.execute(
                    t.update()
                    .where(t.c.id == sa.bindparam("row_id"))
                    .values(error=sa.bindparam("reason")),
                    [{"row_id": i, "reason": r} for i, r in bad],
                )
        for row_id, reason in bad:
            log.error("outbox %s row %s cannot be published: %s", self.outbox.name, row_id, reason)
        self.stats.failed_rows += len(bad)
        self.count_batch(len(items))
        return RelayBatch(len(rows), len(items), drained=False)

    def status(self) -> OutboxStatus:
        """What waits in this relay's outbox (a query: for status pages, not hot loops)."""
        return outbox_status(self.engine, self.outbox)

    def health_detail(self) -> dict[str, object]:
        return {
            "outbox": self.outbox.name,
            "failed_rows": self.stats.failed_rows,
            "holds_lock": self._conn is not None,
        }

    def close(self) -> None:
        self._disconnect()


def purge_published(
    engine: sa.Engine | str, older_than: float, outbox: Outbox | None = None
) -> int:
    """Delete rows a mark-mode relay published more than ``older_than`` seconds ago."""
    t = (outbox or DEFAULT_OUTBOX).table
    engine = make_engine(engine)
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=older_than)
    if engine.dialect.name == "sqlite":  # stored as naive UTC
        cutoff = cutoff.replace(tzinfo=None)
    with engine.begin() as conn:
        result = conn.execute(
            t.delete().where(t.c.published_at.is_not(None), t.c.published_at < cutoff)
        )
    return int(result.rowcount)


def add_outbox_relay(
    app: SourceHost,
    name: str,
    engine: sa.Engine | str,
    *,
    outbox: Outbox | None = None,
    batch_size: int = 1000,
    poll_interval: float = 0.05,
    delete: bool = True,
) -> str:
    """Register a relay for ``engine``'s outbox as one of ``app``'s runnables, so
    ``changefeed run NAME``, ``run --all`` and the supervisor run it like a pillow. It
    publishes with the app's publisher and routes with the app's router. Returns ``name``."""
    object_name(name, "relay name")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")

    def factory(host: SourceHost) -> OutboxRelay:
        return OutboxRelay(
            engine,
            host.publisher(),
            outbox=outbox,
            router=host.router,
            batch_size=batch_size,
            poll_interval=poll_interval,
            delete=delete,
            name=name,
        )

    app.add_runnable(name, factory)
    return name
