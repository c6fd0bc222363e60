"""The error queue: changes whose processing failed, with what is needed to retry them.

A failed change never stops a pillow and is never lost: it is stored with its stub, the
processor that failed, the exception and traceback, and is retried with exponential backoff
until `RetryPolicy.max_attempts`, then parked for an operator (``changefeed errors retry``).
"""

from __future__ import annotations

import builtins
import hashlib
import json
import time
import traceback as tb
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from changefeed.backoff import Backoff
from changefeed.change import Change
from changefeed.db import create_tables, make_engine
from changefeed.failures import (  # noqa: F401 - the failure types live with the queue
    FETCH,
    INVALID_STUB,
    DependencyDownError,
    Failure,
    StaleReadError,
)

PENDING = "pending"
PARKED = "parked"

NAME_CHARS = 128
"""Longest pillow or processor name stored; longer ones are shortened by `bounded`."""
TOPIC_CHARS = 249
TYPE_CHARS = 255
TEXT_CHARS = 64 * 1024
"""Longest message or traceback stored (characters); a traceback keeps its end."""
ID_CHARS = 1024 * 1024
STUB_BYTES = 1024 * 1024

metadata = sa.MetaData()

errors_table = sa.Table(
    "changefeed_errors",
    metadata,
    # AUTOINCREMENT on SQLite: an id is never handed out twice, even after a purge emptied
    # the table (PostgreSQL sequences never reuse either), so "#N" always means one entry.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("pillow", sa.String(NAME_CHARS), nullable=False),
    sa.Column("processor", sa.String(NAME_CHARS), nullable=False),
    # Kept whole (escaped) in a text column; found through doc_key, which an index can hold
    # whatever the id's length.
    sa.Column("document_id", sa.Text, nullable=False),
    sa.Column("topic", sa.String(TOPIC_CHARS), nullable=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("stub", sa.LargeBinary, nullable=False),
    sa.Column("error_type", sa.String(TYPE_CHARS), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("traceback", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_attempt_at", sa.Float, nullable=False),
    sa.Column("next_attempt_at", sa.Float, nullable=True),
    sa.Column("doc_key", sa.String(64), nullable=True),
    sa.Index("ix_changefeed_errors_due", "pillow", "status", "next_attempt_at"),
    sa.Index("ix_changefeed_errors_key", "pillow", "processor", "doc_key"),
    sqlite_autoincrement=True,
)

_RECORD_COLUMNS = [c for c in errors_table.columns if c.name != "doc_key"]


def storable(text: str) -> str:
    """``text`` as every supported database stores it: lone surrogates (invalid UTF-8) and
    NUL (refused by PostgreSQL) written as backslash escapes, e.g. ``\\x00``."""
    if text.isascii() and "\x00" not in text:
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def bounded(text: str, limit: int = NAME_CHARS) -> str:
    """``text`` made storable and at most ``limit`` characters: a longer one keeps its start
    and ends in a hash of the whole, so two long names stay distinct and the same name always
    shortens the same way (processor names derived from long data source names or aliases)."""
    text = storable(text)
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return f"{text[: limit - 17]}~{digest}"


def _tail(text: str, limit: int = TEXT_CHARS) -> str:
    text = storable(text)
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


def _head(text: str, limit: int = TEXT_CHARS) -> str:
    text = storable(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def doc_key(change: Change) -> str:
    """What makes two failures of one processor "the same entry": the document, or for an
    invalid stub (which may have no id) its place in the log, so a replay does not add it
    twice."""
    if change.metadata is None:
        ident = f"stub\0{change.topic}\0{change.partition}\0{change.offset}"
    else:
        ident = f"doc\0{change.id}"
    return hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()


def _error_type(exc: BaseException) -> str:
    return bounded(f"{type(exc).__module__}.{type(exc).__qualname__}", TYPE_CHARS)


def _trace(exc: BaseException) -> str:
    return _tail("".join(tb.format_exception(type(exc), exc, exc.__traceback__)))


def _message(exc: BaseException) -> str:
    try:
        return _head(str(exc))
    except Exception:  # noqa: BLE001 - a broken __str__ must not stop the queue
        return f"<{type(exc).__name__}: message not printable>"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a failed change is tried again: the one `Backoff` (``base_delay *
    factor**(attempts-1)``, capped at ``max_delay``), parked after ``max_attempts``.

    The fields stay the queue's own vocabulary (they are what users configure); the
    arithmetic is `backoff`'s, shared with every other wait in changefeed."""

    base_delay: float = 10.0
    factor: float = 2.0
    max_delay: float = 3600.0
    max_attempts: int = 8
    backoff: Backoff = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        backoff = Backoff(
            base=self.base_delay,
            factor=self.factor,
            cap=self.max_delay,
            retries=max(0, self.max_attempts - 1),
        )
        object.__setattr__(self, "backoff", backoff)

    def delay(self, attempts: int) -> float:
        """Seconds until the next try of a change that has failed ``attempts`` times."""
        return self.backoff.delay(attempts)


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    id: int
    pillow: str
    processor: str
    document_id: str
    topic: str
    partition: int
    offset: int
    stub: bytes
    error_type: str
    message: str
    traceback: str
    attempts: int
    status: str
    created_at: float
    last_attempt_at: float
    next_attempt_at: float | None

    def to_dict(self, detail: bool = False) -> dict[str, object]:
        """JSON-ready form; the stub and traceback only with ``detail``."""
        out: dict[str, object] = {
            name: getattr(self, name)
            for name in self.__slots__
            if name not in ("stub", "traceback")
        }
        if detail:
            out["stub"] = self.stub.decode("utf-8", "replace")
            out["traceback"] = self.traceback
        return out


def _stub_bytes(change: Change) -> bytes:
    if change.metadata is not None:
        try:
            return change.metadata.encode()
        except (UnicodeEncodeError, TypeError, ValueError):
            # e.g. a lone surrogate in an id: JSON can still escape it.
            return json.dumps(change.metadata.to_dict(), default=str).encode()
    return (change.raw or b"")[:STUB_BYTES]


class ErrorQueue:
    """The error queue on SQLite or PostgreSQL. Every value written is bounded and escaped
    first (`storable`, `bounded`): the queue is written inside a batch, before its
    checkpoint, so a value the database refuses would stop the pillow on every restart."""

    def __init__(
        self,
        engine: sa.Engine | str,
        policy: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = make_engine(engine)
        self.policy = policy or RetryPolicy()
        self.clock = clock
        self._created = False

    def create(self) -> None:
        if not self._created:
            create_tables(self.engine, metadata)
            _migrate(self.engine)
            self._created = True

    def add(
        self,
        pillow: str,
        change: Change,
        processor: str,
        exc: BaseException,
        *,
        retryable: bool = True,
        policy: RetryPolicy | None = None,
    ) -> None:
        """Store a failure; an open entry for the same document and processor is updated
        (newer stub, one more attempt) rather than duplicated."""
        self.add_many(pillow, [(change, processor, exc)], retryable=retryable, policy=policy)

    def add_many(
        self,
        pillow: str,
        failures: builtins.list[tuple[Change, str, BaseException]],
        *,
        retryable: bool = True,
        policy: RetryPolicy | None = None,
    ) -> None:
        """Store failures in one transaction. An invalid stub already queued (a replay read
        the same log record again) is left as it is."""
        if not failures:
            return
        self.create()
        policy = policy or self.policy
        now = self.clock()
        t = errors_table
        pillow = bounded(pillow)
        with self.engine.begin() as conn:
            for change, processor, exc in failures:
                processor = bounded(processor)
                key = doc_key(change)
                existing = conn.execute(
                    sa.select(t.c.id, t.c.attempts)
                    .where((t.c.pillow == pillow) & (t.c.processor == processor))
                    .where(t.c.doc_key == key)
                    .order_by(t.c.id)
                    .limit(1)
                ).first()
                if existing and change.metadata is None:
                    continue
                attempts = (existing.attempts if existing else 0) + 1
                parked = not retryable or attempts >= policy.max_attempts
                values = {
                    "topic": bounded(change.topic, TOPIC_CHARS),
                    "partition": change.partition,
                    "offset": change.offset,
                    "stub": _stub_bytes(change),
                    "error_type": _error_type(exc),
                    "message": _message(exc),
                    "traceback": _trace(exc),
                    "attempts": attempts,
                    "status": PARKED if parked else PENDING,
                    "last_attempt_at": now,
                    "next_attempt_at": None if parked else now + policy.delay(attempts),
                }
                if existing:
                    conn.execute(t.update().where(t.c.id == existing.id).values(**values))
                else:
                    conn.execute(
                        t.insert().values(
                            pillow=pillow,
                            processor=processor,
                            document_id=_head(change.id or "", ID_CHARS),
                            doc_key=key,
                            created_at=now,
                            **values,
                        )
                    )

    def resolve(self, error_id: int) -> None:
        """Remove an entry whose change was processed successfully."""
        self.create()
        with self.engine.begin() as conn:
            conn.execute(errors_table.delete().where(errors_table.c.id == error_id))

    def record_failure(
        self, record: ErrorRecord, exc: BaseException, policy: RetryPolicy | None = None
    ) -> None:
        """One more failed attempt for an entry: back off further, or park it at the max."""
        policy = policy or self.policy
        now = self.clock()
        attempts = record.attempts + 1
        parked = attempts >= policy.max_attempts
        with self.engine.begin() as conn:
            conn.execute(
                errors_table.update()
                .where(errors_table.c.id == record.id)
                .values(
                    attempts=attempts,
                    status=PARKED if parked else PENDING,
                    error_type=_error_type(exc),
                    message=_message(exc),
                    traceback=_trace(exc),
                    last_attempt_at=now,
                    next_attempt_at=None if parked else now + policy.delay(attempts),
                )
            )

    def _select(self) -> sa.Select[Any]:
        return sa.select(*_RECORD_COLUMNS)

    def due(self, pillow: str, limit: int = 500, now: float | None = None) -> list[ErrorRecord]:
        self.create()
        t = errors_table
        when = self.clock() if now is None else now
        query = (
            self._select()
            .where((t.c.pillow == pillow) & (t.c.status == PENDING) & (t.c.next_attempt_at <= when))
            .order_by(t.c.next_attempt_at, t.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [ErrorRecord(*row) for row in conn.execute(query)]

    def list(
        self,
        pillow: str | None = None,
        status: str | None = None,
        limit: int = 100,
        after_id: int = 0,
        *,
        not_pillows: builtins.list[str] | None = None,
    ) -> list[ErrorRecord]:
        """Entries by id, a page at a time (``after_id``); ``not_pillows`` keeps only the
        entries of other pillows (the orphaned ones, given the app's pillow names)."""
        self.create()
        t = errors_table
        query = self._select().where(t.c.id > after_id).order_by(t.c.id).limit(limit)
        if pillow is not None:
            query = query.where(t.c.pillow == pillow)
        if status is not None:
            query = query.where(t.c.status == status)
        if not_pillows is not None:
            query = query.where(t.c.pillow.not_in(not_pillows))
        with self.engine.connect() as conn:
            return [ErrorRecord(*row) for row in conn.execute(query)]

    def iter_all(self, pillow: str | None = None, page: int = 1000) -> Iterator[ErrorRecord]:
        """Every entry, read ``page`` rows at a time so memory stays bounded."""
        after = 0
        while True:
            records = self.list(pillow, limit=page, after_id=after)
            yield from records
            if len(records) < page:
                return
            after = records[-1].id

    def get(self, error_id: int) -> ErrorRecord | None:
        self.create()
        with self.engine.connect() as conn:
            row = conn.execute(self._select().where(errors_table.c.id == error_id)).first()
        return ErrorRecord(*row) if row else None

    def counts(self, pillow: str | None = None) -> dict[str, int]:
        """Entries per status."""
        self.create()
        t = errors_table
        query = sa.select(t.c.status, sa.func.count()).group_by(t.c.status)
        if pillow is not None:
            query = query.where(t.c.pillow == pillow)
        with self.engine.connect() as conn:
            out = {PENDING: 0, PARKED: 0}
            out.update({status: int(n) for status, n in conn.execute(query)})
            return out

    def pillows(self) -> dict[str, int]:
        """{pillow: number of entries} for every pillow with entries."""
        self.create()
        t = errors_table
        query = sa.select(t.c.pillow, sa.func.count()).group_by(t.c.pillow).order_by(t.c.pillow)
        with self.engine.connect() as conn:
            return {name: int(n) for name, n in conn.execute(query)}

    def make_due(
        self,
        pillow: str | None = None,
        ids: builtins.list[int] | None = None,
        parked_only: bool = False,
    ) -> int:
        """Operator retry: mark entries (parked ones too) due now. Their attempt count is
        kept, so a retry that fails again counts, and parks the entry again at the max."""
        self.create()
        t = errors_table
        stmt = t.update().values(status=PENDING, next_attempt_at=self.clock())
        if pillow is not None:
            stmt = stmt.where(t.c.pillow == pillow)
        if ids is not None:
            stmt = stmt.where(t.c.id.in_(ids))
        if parked_only:
            stmt = stmt.where(t.c.status == PARKED)
        with self.engine.begin() as conn:
            return int(conn.execute(stmt).rowcount)

    def purge(
        self,
        pillow: str | None = None,
        ids: builtins.list[int] | None = None,
        status: str | None = None,
        older_than: float | None = None,
        *,
        not_pillows: builtins.list[str] | None = None,
    ) -> int:
        """Delete matching entries; ``not_pillows`` (the app's pillow names) deletes the
        orphaned ones, whose pillow no longer exists and so are never retried."""
        self.create()
        t = errors_table
        stmt = t.delete()
        if pillow is not None:
            stmt = stmt.where(t.c.pillow == pillow)
        if ids is not None:
            stmt = stmt.where(t.c.id.in_(ids))
        if status is not None:
            stmt = stmt.where(t.c.status == status)
        if older_than is not None:
            stmt = stmt.where(t.c.created_at < self.clock() - older_than)
        if not_pillows is not None:
            stmt = stmt.where(t.c.pillow.not_in(not_pillows))
        with self.engine.begin() as conn:
            return int(conn.execute(stmt).rowcount)


def _old_doc_key(document_id: str) -> str:
    return hashlib.sha256(f"doc\0{document_id}".encode("utf-8", "surrogatepass")).hexdigest()


def _migrate(engine: sa.Engine) -> None:
    """Bring a state database made by an older changefeed up to this table: ``document_id``
    as text, the ``doc_key`` column (filled in) and its index, and on SQLite ids that are
    never reused (AUTOINCREMENT needs the table rebuilt)."""
    inspector = sa.inspect(engine)
    columns = {c["name"]: c for c in inspector.get_columns(errors_table.name)}
    name = errors_table.name
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            sql = conn.execute(
                sa.text("SELECT sql FROM sqlite_master WHERE type='table' AND name=:n"),
                {"n": name},
            ).scalar_one()
        if "doc_key" in columns and "AUTOINCREMENT" in sql.upper():
            return
        _rebuild_sqlite(engine)
        return
    if "doc_key" in columns and isinstance(columns["document_id"]["type"], sa.Text):
        return
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text(f"ALTER TABLE {name} ALTER COLUMN document_id TYPE TEXT"))
            conn.execute(sa.text("DROP INDEX IF EXISTS ix_changefeed_errors_doc"))
        if "doc_key" not in columns:
            conn.execute(sa.text(f"ALTER TABLE {name} ADD COLUMN doc_key VARCHAR(64)"))
        _fill_doc_keys(conn)
        key_index = next(i for i in errors_table.indexes if i.name == "ix_changefeed_errors_key")
        key_index.create(conn, checkfirst=True)


def _fill_doc_keys(conn: sa.Connection) -> None:
    t = errors_table
    after = 0
    while True:
        rows = conn.execute(
            sa.select(t.c.id, t.c.document_id)
            .where((t.c.id > after) & t.c.doc_key.is_(None))
            .order_by(t.c.id)
            .limit(1000)
        ).all()
        if not rows:
            return
        for row in rows:
            conn.execute(
                t.update().where(t.c.id == row.id).values(doc_key=_old_doc_key(row.document_id))
            )
        after = rows[-1].id


def _rebuild_sqlite(engine: sa.Engine) -> None:
    old = f"{errors_table.name}_old"
    with engine.begin() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns(errors_table.name)}
        conn.execute(sa.text(f"ALTER TABLE {errors_table.name} RENAME TO {old}"))
        for index in ("ix_changefeed_errors_due", "ix_changefeed_errors_doc"):
            conn.execute(sa.text(f"DROP INDEX IF EXISTS {index}"))
        metadata.create_all(conn)
        names = [c.name for c in errors_table.columns if c.name in columns]
        listed = ", ".join(f'"{n}"' for n in names)
        conn.execute(
            sa.text(f"INSERT INTO {errors_table.name} ({listed}) SELECT {listed} FROM {old}")
        )
        conn.execute(sa.text(f"DROP TABLE {old}"))
        _fill_doc_keys(conn)
