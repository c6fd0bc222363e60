"""PostgreSQL CDC: stubs for committed row changes, read from a logical replication slot.

The database itself records every committed change in its write-ahead log, so nothing in the
application has to remember to publish, and a crash anywhere loses nothing: a replication slot
keeps the WAL until its consumer confirms it. `PostgresCDC` polls the slot with psycopg 3
(``pg_logical_slot_peek_changes``, wal2json format-version 2), turns changes of the configured
tables into stubs (`CDCTable`: id column, doc type, optional domain and version columns;
deletes become deletions), publishes them, waits until the log acknowledged them (``flush``),
and only then moves the slot forward (``pg_replication_slot_advance``). A crash before the
advance re-delivers the batch: at least once, in commit order (logical decoding emits whole
transactions in the order they committed).

Peeking returns whole transactions, so the slot always advances to the end of a commit. The
begin/commit records of transactions on other tables come along too: they let the slot advance
past unrelated work, which otherwise would pin WAL on the server.

Only one consumer may use a slot at a time; the server refuses a second one while a call of
the first is running. A slot that nobody reads holds WAL forever: watch `slot_status` (lag in
bytes) and drop slots you no longer use.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg
import yaml

from changefeed.backends.base import Publisher
from changefeed.change import ChangeMeta
from changefeed.identifiers import object_name, sql_identifier, topic_name
from changefeed.topics import TopicRouter

log = logging.getLogger("changefeed.sources.postgres_cdc")

PLUGIN = "wal2json"
_SLOT_NAME = re.compile(r"^[a-z0-9_]{1,63}$")

# wal2json: one JSON object per change, no column types (smaller, faster to parse).
_PEEK = (
    "SELECT lsn::text, data FROM pg_logical_slot_peek_changes("
    "%s, NULL, %s, 'format-version', '2', 'include-types', '0', 'add-tables', %s)"
)


class CDCError(RuntimeError):
    """A server, slot or table that cannot be used for CDC, with what to do about it."""


def slot_name(name: object) -> str:
    """A replication slot name: lower-case letters, digits and '_', at most 63."""
    if not isinstance(name, str) or not _SLOT_NAME.match(name):
        raise CDCError(
            f"invalid replication slot name {name!r}: use lower-case letters, digits and '_', "
            "at most 63"
        )
    return name


def libpq_dsn(url: str) -> str:
    """A libpq DSN from a libpq DSN or a SQLAlchemy URL (``postgresql+psycopg://...``)."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.startswith("postgresql+"):
        return f"postgresql://{rest}"
    if sep and scheme not in ("postgresql", "postgres"):
        raise CDCError(f"not a PostgreSQL URL: scheme {scheme!r}")
    return url


@dataclass(frozen=True, slots=True)
class CDCTable:
    """Which table to watch and how its rows become stubs.

    The document id comes from ``id_column``, which must be part of the table's replica
    identity (its primary key, by default) so deletes carry it. ``domain_column`` and
    ``version_column`` of deleted rows are only known with ``REPLICA IDENTITY FULL``.
    """

    table: str
    id_column: str = "id"
    document_type: str | None = None
    """Defaults to the table name."""
    schema: str = "public"
    domain_column: str | None = None
    version_column: str | None = None
    data_source_name: str | None = None
    """The document store name the stubs point at; defaults to the table name."""
    data_source_type: str = "sql"
    topic: str | None = None
    """Publish to this topic instead of routing by document type."""

    def __post_init__(self) -> None:
        sql_identifier(self.table, "table name")
        sql_identifier(self.schema, "schema")
        sql_identifier(self.id_column, "id column")
        for col in (self.domain_column, self.version_column):
            if col is not None:
                sql_identifier(col, "column")
        if self.data_source_name is not None:
            object_name(self.data_source_name, "data source name")
        object_name(self.data_source_type, "data source type")
        if self.topic is not None:
            topic_name(self.topic)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    @classmethod
    def parse(cls, spec: str) -> CDCTable:
        """From ``[schema.]table:id_column:doc_type[:domain_column]`` (the CLI's form)."""
        parts = spec.split(":")
        if not 3 <= len(parts) <= 4 or not all(parts[:3]):
            raise CDCError(
                f"invalid table spec {spec!r}: use [schema.]table:id_column:doc_type[:domain_column]"
            )
        schema, _, table = parts[0].rpartition(".")
        return cls(
            table,
            id_column=parts[1],
            document_type=parts[2],
            schema=schema or "public",
            domain_column=parts[3] if len(parts) == 4 and parts[3] else None,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CDCTable:
        if not isinstance(data, Mapping) or "table" not in data:
            raise CDCError(f"a table entry needs at least 'table': {data!r}")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise CDCError(f"unknown table option(s): {', '.join(sorted(map(str, unknown)))}")
        try:
            return cls(**{str(k): v for k, v in data.items()})
        except TypeError as exc:
            raise CDCError(f"invalid table entry {data!r}: {exc}") from None

    def stub(self, row: Mapping[str, Any], deleted: bool) -> ChangeMeta:
        doc_id = row.get(self.id_column)
        if doc_id is None:
            raise CDCError(
                f"change of {self.qualified} without {self.id_column!r}: make it part of the "
                "primary key or replica identity"
            )
        domain = row.get(self.domain_column) if self.domain_column else None
        version = row.get(self.version_column) if self.version_column else None
        return ChangeMeta(
            str(doc_id),
            self.data_source_type,
            self.data_source_name or self.table,
            document_type=self.document_type or self.table,
            domain=None if domain is None else str(domain),
            is_deletion=deleted,
            version=version if isinstance(version, int) and not isinstance(version, bool) else None,
        )


@dataclass(frozen=True, slots=True)
class CDCConfig:
    """A config file's content: the tables, and optionally the slot."""

    tables: tuple[CDCTable, ...]
    slot: str | None = None


def load_config(path: str | Path) -> CDCConfig:
    """Read a YAML or JSON file: ``{slot: name, tables: [{table: ..., id_column: ...}, ...]}``."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise CDCError(f"cannot read CDC config {str(path)!r}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise CDCError(f"CDC config {str(path)!r} is not valid YAML/JSON: {exc}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("tables"), list):
        raise CDCError(f"CDC config {str(path)!r} needs a 'tables' list")
    unknown = set(data) - {"slot", "tables"}
    if unknown:
        raise CDCError(f"unknown CDC config key(s): {', '.join(sorted(map(str, unknown)))}")
    slot = data.get("slot")
    return CDCConfig(
        tuple(CDCTable.from_dict(t) for t in data["tables"]),
        None if slot is None else slot_name(slot),
    )


# -- server, table and slot checks ---------------------------------------------------------


def _connect(dsn: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(libpq_dsn(dsn), autocommit=True)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CDCError(f"cannot connect to PostgreSQL: {first}") from None


def check_server(conn: psycopg.Connection[Any]) -> None:
    """Logical decoding needs ``wal_level=logical``; say so instead of a cryptic failure."""
    row = conn.execute("SHOW wal_level").fetchone()
    level = row[0] if row else "unknown"
    if level != "logical":
        raise CDCError(
            f"PostgreSQL runs with wal_level={level}; CDC needs wal_level=logical "
            "(set it in postgresql.conf and restart the server)"
        )


_TABLE_INFO = """
SELECT c.oid, c.relreplident, c.relkind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""
_COLUMNS = (
    "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped"
)
_IDENTITY_INDEX = """
SELECT a.attname FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
WHERE i.indrelid = %s AND (CASE WHEN %s THEN i.indisprimary ELSE i.indisreplident END)
"""


def check_table(conn: psycopg.Connection[Any], table: CDCTable) -> None:
    """The table exists, has the configured columns, and its deletes will carry the id."""
    info = conn.execute(_TABLE_INFO, (table.schema, table.table)).fetchone()
    if info is None or info[2] not in ("r", "p"):
        raise CDCError(f"table {table.qualified} does not exist")
    oid, identity = info[0], info[1]
    columns = {r[0] for r in conn.execute(_COLUMNS, (oid,))}
    for col in (table.id_column, table.domain_column, table.version_column):
        if col is not None and col not in columns:
            raise CDCError(f"table {table.qualified} has no column {col!r}")
    if identity == "f":
        return
    if identity == "n":
        raise CDCError(
            f"table {table.qualified} has REPLICA IDENTITY NOTHING: its updates and deletes "
            "cannot be identified; use the default (primary key) or REPLICA IDENTITY FULL"
        )
    key = {r[0] for r in conn.execute(_IDENTITY_INDEX, (oid, identity == "d"))}
    if not key:
        raise CDCError(
            f"table {table.qualified} has no primary key: CDC cannot tell which row an update "
            "or delete changed; add a primary key or set REPLICA IDENTITY FULL"
        )
    if table.id_column not in key:
        raise CDCError(
            f"id column {table.id_column!r} of {table.qualified} is not in its primary key "
            f"(or replica identity: {', '.join(sorted(key))}), so deletes would not carry it"
        )


def _plugin_error(exc: psycopg.Error) -> CDCError | None:
    text = str(exc)
    if "output_plugin_libraries" in text or "may not be used as an output plugin" in text:
        return CDCError(
            f"the server does not allow the {PLUGIN} output plugin: add it to "
            "output_plugin_libraries and reload the configuration"
        )
    if "could not access file" in text and PLUGIN in text:
        return CDCError(
            f"the {PLUGIN} output plugin is not installed on the server "
            "(Debian: apt-get install postgresql-<version>-wal2json)"
        )
    return None


def create_slot(dsn: str, slot: str) -> dict[str, Any]:
    """Create a logical replication slot for wal2json; returns its `slot_status`.

    Changes committed after this point are kept for the slot until it is advanced.
    """
    slot_name(slot)
    with _connect(dsn) as conn:
        check_server(conn)
        try:
            conn.execute("SELECT pg_create_logical_replication_slot(%s, %s)", (slot, PLUGIN))
        except psycopg.errors.DuplicateObject:
            raise CDCError(f"replication slot {slot!r} already exists") from None
        except psycopg.Error as exc:
            err = _plugin_error(exc)
            if err is not None:
                raise err from None
            raise
    return slot_status(dsn, slot)


def drop_slot(dsn: str, slot: str) -> None:
    """Drop a slot so the server stops keeping WAL for it."""
    slot_name(slot)
    with _connect(dsn) as conn:
        try:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        except psycopg.errors.UndefinedObject:
            raise CDCError(f"replication slot {slot!r} does not exist") from None
        except psycopg.errors.ObjectInUse:
            raise CDCError(
                f"replication slot {slot!r} is in use; stop its consumer first"
            ) from None


_SLOTS = """
SELECT slot_name, plugin, slot_type, database, active, active_pid,
       restart_lsn::text, confirmed_flush_lsn::text,
       pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,
       wal_status
FROM pg_replication_slots
"""
_SLOT_FIELDS = (
    "slot",
    "plugin",
    "slot_type",
    "database",
    "active",
    "active_pid",
    "restart_lsn",
    "confirmed_flush_lsn",
    "lag_bytes",
    "retained_bytes",
    "wal_status",
)


def list_slots(dsn: str) -> list[dict[str, Any]]:
    """Every replication slot of the server, with `slot_status`'s fields."""
    with _connect(dsn) as conn:
        rows = conn.execute(_SLOTS + " ORDER BY slot_name").fetchall()
    return [{"exists": True, **dict(zip(_SLOT_FIELDS, r, strict=True))} for r in rows]


def slot_status(dsn: str, slot: str) -> dict[str, Any]:
    """Where a slot stands, for ``changefeed status``, metrics and dashboards.

    ``lag_bytes`` is how much WAL was written since the slot's consumer last confirmed
    (``pg_current_wal_lsn() - confirmed_flush_lsn``): near 0 for a consumer that keeps up.
    ``retained_bytes`` is the WAL the server keeps for the slot. ``exists`` is False (and
    nothing else is set) when there is no such slot.
    """
    slot_name(slot)
    with _connect(dsn) as conn:
        row = conn.execute(_SLOTS + " WHERE slot_name = %s", (slot,)).fetchone()
    if row is None:
        return {"slot": slot, "exists": False}
    return {"exists": True, **dict(zip(_SLOT_FIELDS, row, strict=True))}


# -- the publisher -------------------------------------------------------------------------


@dataclass(slots=True)
class CDCStats:
    published: int = 0
    transactions: int = 0
    truncates: int = 0
    batches: int = 0
    last_lsn: str | None = None


Batch = tuple[list[str], Any]
"""(wal2json rows of whole transactions, the position to confirm after publishing them)."""

_WAL2JSON_OPTIONS = {"format-version": "2", "include-types": "0"}


class _PollingReader:
    """``pg_logical_slot_peek_changes`` + ``pg_replication_slot_advance`` with psycopg 3.

    Exact about "drained" (it reads up to the current WAL end), so ``--once`` uses it. Each
    peek decodes again from the slot's restart point, which trails by up to ~15 s of WAL.
    """

    def __init__(self, dsn: str, slot: str, add_tables: str) -> None:
        self.slot = slot
        self.add_tables = add_tables
        self.conn = _connect(dsn)

    def read(self, max_rows: int) -> Batch:
        try:
            rows = self.conn.execute(_PEEK, (self.slot, max_rows, self.add_tables)).fetchall()
        except psycopg.errors.UndefinedObject:
            raise CDCError(f"replication slot {self.slot!r} does not exist") from None
        except psycopg.errors.ObjectInUse:
            raise CDCError(
                f"replication slot {self.slot!r} is in use by another consumer"
            ) from None
        except psycopg.Error as exc:
            raise _plugin_error(exc) or exc from None
        return [r[1] for r in rows], (rows[-1][0] if rows else None)

    def confirm(self, lsn: Any) -> None:
        self.conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (self.slot, lsn))

    def close(self) -> None:
        self.conn.close()


class _StreamingReader:
    """The replication protocol with psycopg2 (extra ``cdc``): one decoding session.

    Changes arrive as they commit, and nothing is decoded twice. Confirmation is feedback
    sent at once (``force``), so a restart resumes right after what was published.
    """

    def __init__(self, dsn: str, slot: str, add_tables: str, stop: threading.Event) -> None:
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
        except psycopg2.errors.ObjectInUse:
            self.conn.close()
            raise CDCError(f"replication slot {slot!r} is in use by another consumer") from None
        except psycopg2.errors.UndefinedObject:
            self.conn.close()
            raise CDCError(f"replication slot {slot!r} does not exist") from None
        self._partial: list[tuple[int, str]] = []

    def read(self, max_rows: int, wait: float) -> Batch:
        """Whole transactions that arrived, up to about ``max_rows``, waiting up to ``wait``
        for the first one. A transaction still arriving is kept for the next call."""
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
        return [data for _, data in done], (done[-1][0] if done else None)

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


class PostgresCDC:
    """Publishes stubs for the committed changes of ``tables`` from replication slot ``slot``.

    One batch: read whole transactions (about ``batch_size`` changes at most), publish the
    stubs of configured tables, ``flush`` the publisher, then confirm the slot up to the
    last commit read. Stubs are routed by document type with ``router``, unless the table
    or ``topic`` names one.

    ``mode``: ``stream`` follows the slot over the replication protocol (psycopg2, the
    ``cdc`` extra): low latency, each change decoded once. ``poll`` peeks every
    ``poll_interval`` with psycopg 3 alone. ``auto`` streams when psycopg2 is installed.
    ``run(forever=False)`` (drain and stop) always polls: only a peek knows the slot is
    drained.
    """

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
        self.tables = {(t.schema, t.table): t for t in tables}
        if len(self.tables) != len(tables):
            raise CDCError("a table is configured twice")
        self.publisher = publisher
        self.router = router or TopicRouter()
        self.topic = None if topic is None else topic_name(topic)
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.mode = mode
        self.stats = CDCStats()
        self._add_tables = ",".join(t.qualified for t in tables)
        self._stop = threading.Event()
        self._reader: _PollingReader | _StreamingReader | None = None

    def check(self) -> None:
        """Fail early, with what to do: server, slot and every table."""
        with _connect(self.dsn) as conn:
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
        self.stats.published += len(items)
        self.stats.batches += 1
        self.stats.last_lsn = str(lsn)
        return len(items)

    def _open_reader(self, forever: bool) -> _PollingReader | _StreamingReader:
        if self._reader is None:
            stream = forever and (
                self.mode == "stream" or (self.mode == "auto" and streaming_available())
            )
            self._reader = (
                _StreamingReader(self.dsn, self.slot, self._add_tables, self._stop)
                if stream
                else _PollingReader(self.dsn, self.slot, self._add_tables)
            )
        return self._reader

    def poll_once(self) -> int:
        """Read (peek), publish and confirm one batch; returns how many stubs were published."""
        reader = self._open_reader(forever=False)
        assert isinstance(reader, _PollingReader)
        rows, lsn = reader.read(self.batch_size)
        return self._publish(rows, lsn) if rows else 0

    def _step(self, forever: bool) -> tuple[int, int]:
        """(rows read, stubs published) for one batch."""
        reader = self._open_reader(forever)
        if isinstance(reader, _StreamingReader):
            rows, lsn = reader.read(self.batch_size, wait=max(self.poll_interval, 0.5))
        else:
            rows, lsn = reader.read(self.batch_size)
        if not rows:
            return 0, 0
        return len(rows), self._publish(rows, lsn)

    def run(self, forever: bool = True) -> int:
        """Publish until stopped (``forever``) or until the slot is drained; returns the count.

        Transient failures (log or database down, slot briefly in use) are retried with
        backoff in ``forever`` mode: the slot keeps everything not yet confirmed.
        """
        total = 0
        backoff = 0.0
        self.check()
        try:
            while not self._stop.is_set():
                try:
                    rows, published = self._step(forever)
                    backoff = 0.0
                except Exception as exc:
                    if not forever or (isinstance(exc, CDCError) and "does not exist" in str(exc)):
                        raise
                    backoff = min(30.0, max(0.5, backoff * 2))
                    log.warning(
                        "CDC slot %s: read or publish failed (%s: %s); retrying in %.1fs",
                        self.slot, type(exc).__name__, exc, backoff,
                    )  # fmt: skip
                    self.close()
                    self._stop.wait(backoff)
                    continue
                total += published
                if rows < self.batch_size and isinstance(self._reader, _PollingReader):
                    if not forever:  # caught up with the WAL as of this peek
                        break
                    self._stop.wait(self.poll_interval)
        finally:
            self.close()
        return total

    def stop(self) -> None:
        """Ask `run` to return after the batch in hand (safe from signal handlers)."""
        self._stop.set()

    def close(self) -> None:
        if self._reader is not None:
            try:
                self._reader.close()
            finally:
                self._reader = None
