"""The error queue: changes whose processing failed, with what is needed to retry them.

A failed change never stops a pillow and is never lost: it is stored with its stub, the
processor that failed, the exception and traceback, and is retried with exponential backoff
until `RetryPolicy.max_attempts`, then parked for an operator (``changefeed errors retry``).
The table, the bounds on what is written to it and its migration are `errors_schema`.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from changefeed.backoff import Backoff
from changefeed.change import Change
from changefeed.clock import SYSTEM_CLOCK, Clock
from changefeed.db import create_tables, make_engine
from changefeed.errors_schema import (
    ID_CHARS,
    NAME_CHARS,
    RECORD_COLUMNS,
    TEXT_CHARS,
    TOPIC_CHARS,
    bounded,
    doc_key,
    error_type_name,
    error_type_of,
    errors_table,
    head,
    message_of,
    metadata,
    migrate,
    stub_of,
    traceback_of,
)
from changefeed.failures import FETCH, INVALID_STUB, Failure

# FETCH, INVALID_STUB, NAME_CHARS, TEXT_CHARS and bounded are re-exported: tests import them
# from the queue's module.
__all__ = [
    "FETCH",
    "INVALID_STUB",
    "NAME_CHARS",
    "PARKED",
    "PENDING",
    "TEXT_CHARS",
    "ErrorQueue",
    "ErrorRecord",
    "RetryPolicy",
    "bounded",
]

PENDING = "pending"
PARKED = "parked"


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


class ErrorQueue:
    """The error queue on SQLite or PostgreSQL. Every value written is bounded and escaped
    first (`storable`, `bounded`): the queue is written inside a batch, before its
    checkpoint, so a value the database refuses would stop the pillow on every restart."""

    def __init__(
        self,
        engine: sa.Engine | str,
        policy: RetryPolicy | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.engine = make_engine(engine)
        self.policy = policy or RetryPolicy()
        self.clock = clock
        self._created = False

    def create(self) -> None:
        if not self._created:
            create_tables(self.engine, metadata)
            migrate(self.engine)
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
        self.add_many(pillow, [Failure(change, exc, retryable, processor)], policy=policy)

    def add_many(
        self,
        pillow: str,
        failures: Iterable[Failure],
        *,
        policy: RetryPolicy | None = None,
    ) -> None:
        """Store failures in one transaction, each named where it failed (`Failure.at`); one
        not retryable is parked at once. An invalid stub already queued (a replay read the
        same log record again) is left as it is."""
        failures = builtins.list(failures)
        if not failures:
            return
        if any(f.where is None for f in failures):
            raise ValueError("a queued failure names where it failed (Failure.at)")
        self.create()
        policy = policy or self.policy
        now = self.clock.time()
        t = errors_table
        pillow = bounded(pillow)
        with self.engine.begin() as conn:
            for change, exc, retryable, where in failures:
                processor = bounded(str(where))
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
                    "stub": stub_of(change),
                    "error_type": error_type_of(exc),
                    "message": message_of(exc),
                    "traceback": traceback_of(exc),
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
                            document_id=head(change.id or "", ID_CHARS),
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
        self,
        record: ErrorRecord,
        exc: BaseException,
        policy: RetryPolicy | None = None,
        *,
        retryable: bool = True,
    ) -> None:
        """One more failed attempt for an entry: back off further, or park it at the max.
        A failure that retrying cannot fix (``retryable=False``: an invalid stub, a document
        the sink refuses) parks it at once, as when it was first queued, so a manual retry
        that fails again does not put it back on the retry schedule."""
        policy = policy or self.policy
        now = self.clock.time()
        attempts = record.attempts + 1
        parked = not retryable or attempts >= policy.max_attempts
        with self.engine.begin() as conn:
            conn.execute(
                errors_table.update()
                .where(errors_table.c.id == record.id)
                .values(
                    attempts=attempts,
                    status=PARKED if parked else PENDING,
                    error_type=error_type_of(exc),
                    message=message_of(exc),
                    traceback=traceback_of(exc),
                    last_attempt_at=now,
                    next_attempt_at=None if parked else now + policy.delay(attempts),
                )
            )

    def _select(self) -> sa.Select[Any]:
        return sa.select(*RECORD_COLUMNS)

    def due(self, pillow: str, limit: int = 500, now: float | None = None) -> list[ErrorRecord]:
        self.create()
        t = errors_table
        when = self.clock.time() if now is None else now
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

    def messages(self, pillow: str, error_type: type[BaseException]) -> dict[str, int]:
        """{message: number of entries} of ``pillow``'s entries that failed with an
        ``error_type`` exception (a status warning groups them, e.g. per missing store)."""
        self.create()
        t = errors_table
        query = (
            sa.select(t.c.message, sa.func.count())
            .where((t.c.pillow == pillow) & (t.c.error_type == error_type_name(error_type)))
            .group_by(t.c.message)
            .order_by(t.c.message)
        )
        with self.engine.connect() as conn:
            return {message: int(n) for message, n in conn.execute(query)}

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
        stmt = t.update().values(status=PENDING, next_attempt_at=self.clock.time())
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
            stmt = stmt.where(t.c.created_at < self.clock.time() - older_than)
        if not_pillows is not None:
            stmt = stmt.where(t.c.pillow.not_in(not_pillows))
        with self.engine.begin() as conn:
            return int(conn.execute(stmt).rowcount)
