"""The error queue: changes whose processing failed, with what is needed to retry them.

A failed change never stops a pillow and is never lost: it is stored with its stub, the
processor that failed, the exception and traceback, and is retried with exponential backoff
until `RetryPolicy.max_attempts`, then parked for an operator (``changefeed errors retry``).
"""

from __future__ import annotations

import builtins
import time
import traceback as tb
from collections.abc import Callable
from dataclasses import dataclass, field

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

metadata = sa.MetaData()

errors_table = sa.Table(
    "changefeed_errors",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("pillow", sa.String(128), nullable=False),
    sa.Column("processor", sa.String(128), nullable=False),
    sa.Column("document_id", sa.String(255), nullable=False),
    sa.Column("topic", sa.String(249), nullable=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("stub", sa.LargeBinary, nullable=False),
    sa.Column("error_type", sa.String(255), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("traceback", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_attempt_at", sa.Float, nullable=False),
    sa.Column("next_attempt_at", sa.Float, nullable=True),
    sa.Index("ix_changefeed_errors_due", "pillow", "status", "next_attempt_at"),
    sa.Index("ix_changefeed_errors_doc", "pillow", "processor", "document_id"),
)


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
        return change.metadata.encode()
    return change.raw or b""


class ErrorQueue:
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
        failures: list[tuple[Change, str, BaseException]],
        *,
        retryable: bool = True,
        policy: RetryPolicy | None = None,
    ) -> None:
        if not failures:
            return
        self.create()
        policy = policy or self.policy
        now = self.clock()
        t = errors_table
        with self.engine.begin() as conn:
            for change, processor, exc in failures:
                trace = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
                # Invalid stubs are never merged: each is its own record (often keyless).
                existing = (
                    conn.execute(
                        sa.select(t.c.id, t.c.attempts).where(
                            (t.c.pillow == pillow)
                            & (t.c.processor == processor)
                            & (t.c.document_id == change.id)
                        )
                    ).first()
                    if change.metadata is not None
                    else None
                )
                attempts = (existing.attempts if existing else 0) + 1
                parked = not retryable or attempts >= policy.max_attempts
                values = {
                    "topic": change.topic,
                    "partition": change.partition,
                    "offset": change.offset,
                    "stub": _stub_bytes(change),
                    "error_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                    "message": str(exc)[:4000],
                    "traceback": trace[-16000:],
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
                            document_id=change.id,
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
        trace = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
        with self.engine.begin() as conn:
            conn.execute(
                errors_table.update()
                .where(errors_table.c.id == record.id)
                .values(
                    attempts=attempts,
                    status=PARKED if parked else PENDING,
                    error_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
                    message=str(exc)[:4000],
                    traceback=trace[-16000:],
                    last_attempt_at=now,
                    next_attempt_at=None if parked else now + policy.delay(attempts),
                )
            )

    def due(self, pillow: str, limit: int = 500, now: float | None = None) -> list[ErrorRecord]:
        self.create()
        t = errors_table
        when = self.clock() if now is None else now
        query = (
            sa.select(t)
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
    ) -> list[ErrorRecord]:
        self.create()
        t = errors_table
        query = sa.select(t).where(t.c.id > after_id).order_by(t.c.id).limit(limit)
        if pillow is not None:
            query = query.where(t.c.pillow == pillow)
        if status is not None:
            query = query.where(t.c.status == status)
        with self.engine.connect() as conn:
            return [ErrorRecord(*row) for row in conn.execute(query)]

    def get(self, error_id: int) -> ErrorRecord | None:
        self.create()
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(errors_table).where(errors_table.c.id == error_id)).first()
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

    def make_due(
        self,
        pillow: str | None = None,
        ids: builtins.list[int] | None = None,
        parked_only: bool = False,
    ) -> int:
        """Operator retry: mark entries (parked ones too) due now."""
        self.create()
        t = errors_table
        stmt = t.update().values(status=PENDING, next_attempt_at=self.clock(), attempts=0)
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
    ) -> int:
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
        with self.engine.begin() as conn:
            return int(conn.execute(stmt).rowcount)
