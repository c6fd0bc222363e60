"""One batch of changes through fetch and processors, with the failure policy.

The pillow, reindex, the error retry and ``changefeed run --docs`` all hand their changes to
a `BatchRunner`, so deduplication, bulk fetching, processor calls and the sorting of failures
into "this document" and "a dependency" happen in one place, the same way for all of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from changefeed.backoff import Backoff
from changefeed.change import Change, InvalidChangeError, TopicPartition
from changefeed.errors import ErrorQueue, ErrorRecord, RetryPolicy, bounded
from changefeed.failures import (
    FETCH,
    INVALID_STUB,
    DependencyDownError,
    Failure,
    is_dependency_failure,
)
from changefeed.processors.base import BulkProcessor, Processor
from changefeed.stores.base import UnknownDocumentStoreError
from changefeed.stores.fetch import DocumentFetcher, wanted_version

log = logging.getLogger("changefeed.pillow")

_id_of = attrgetter("id")
_metadata_of = attrgetter("metadata")


def dedupe_key(change: Change) -> Any:
    """What makes two changes "the same document": its store and id. Invalid stubs are
    never merged (each is keyed by its place in the log)."""
    meta = change.metadata
    if meta is None:
        return (change.topic, change.partition, change.offset)
    return (meta.data_source_type, meta.data_source_name, change.id)


def latest_per_document(changes: list[Change]) -> list[Change]:
    """One change per document (its latest, in the place of its latest), so a document
    changed many times in a batch is fetched and processed once. Checked in a C loop first:
    when no document id repeats (the usual case) there is nothing to drop.

    The survivor stands for every change of its document, and the document store decides
    what it means (a deletion of a live document is an upsert of it), so processing it gives
    what processing them all in order gives. A late stub (one that announces an older
    version than an earlier change of the batch) does not replace the newer one: that one's
    version is what a stale read is checked against."""
    if len(set(map(_id_of, changes))) == len(changes):
        return changes
    latest: dict[Any, Change] = {}
    for change in changes:
        key = dedupe_key(change)
        earlier = latest.pop(key, None)
        if earlier is not None and _announces_newer(earlier, change):
            change = earlier
        latest[key] = change
    return list(latest.values())


def _announces_newer(change: Change, other: Change) -> bool:
    """Whether both stubs announce a version and ``change``'s is the newer (``version``
    read directly first: this runs once per repeated document of a batch)."""
    mine = change.metadata.version  # type: ignore[union-attr]  # valid: same dedupe key
    theirs = other.metadata.version  # type: ignore[union-attr]
    if mine is None or theirs is None:
        mine, theirs = wanted_version(change), wanted_version(other)
        if mine is None or theirs is None:
            return False
    return mine > theirs


@dataclass(slots=True)
class BatchReport:
    """What one batch did; handed to listeners (metrics, dashboards)."""

    pillow: str
    changes: int
    unique: int
    failures: int
    duration: float
    processor_seconds: dict[str, float] = field(default_factory=dict)
    checkpoint: dict[TopicPartition, int] = field(default_factory=dict)
    retries: int = 0
    fetch_seconds: float = 0.0
    """Time spent fetching documents (in a pipelined pillow, on the reader thread while the
    batch before was processed)."""
    waited: float = 0.0
    """Pipelined pillow: how long the processors waited for this batch to be read and
    fetched (near zero when reading keeps ahead)."""


@dataclass(slots=True)
class PreparedBatch:
    """A batch after `BatchRunner.prepare`: what the processors get, and what already
    failed. ``error`` is a dependency that was down during the fetch; `BatchRunner.apply`
    raises it."""

    changes: Sequence[Change]
    ready: list[Change]
    failures: list[Failure]
    error: DependencyDownError | None = None
    seconds: float = 0.0
    prepared: list[object] = field(default_factory=list)
    """Per processor (in order), what its `BulkProcessor.prepare_changes` returned."""


class BatchRunner:
    """Runs changes through a pillow's fetch and processors and queues what failed."""

    def __init__(
        self,
        name: str,
        processors: Sequence[Processor],
        *,
        fetcher: DocumentFetcher,
        error_queue: ErrorQueue,
        retry_policy: RetryPolicy,
    ) -> None:
        self.name = name
        self.processors = list(processors)
        self.fetcher = fetcher
        self.error_queue = error_queue
        self.retry_policy = retry_policy
        self.needs_documents = any(p.needs_documents for p in self.processors)

    def with_processors(self, processors: Sequence[Processor]) -> BatchRunner:
        """The same runner for a subset of processors (partial reindex)."""
        return BatchRunner(
            self.name,
            processors,
            fetcher=self.fetcher,
            error_queue=self.error_queue,
            retry_policy=self.retry_policy,
        )

    def process(self, changes: Sequence[Change]) -> BatchReport:
        """Fetch documents once, run every processor, queue failures. Raises
        `DependencyDownError` when the batch failed as a whole."""
        return self.apply(self.prepare(changes))

    def prepare(self, changes: Sequence[Change]) -> PreparedBatch:
        """The half of a batch that only reads: invalid stubs set aside, documents fetched
        (stale reads retried, late deletions skipped). Writes nothing, so a pipelined pillow
        runs it for the next batch while this one's processors write. A store that is down
        does not raise here: the error travels with the batch and `apply` raises it, so the
        batch backs off in its turn, after the batches before it."""
        started = time.perf_counter()
        failures: list[Failure] = []
        if all(map(_metadata_of, changes)):  # valid stubs only (checked in C)
            ready = list(changes)
        else:
            ready = [change for change in changes if change.metadata is not None]
            failures.extend(
                Failure(
                    change, InvalidChangeError(change.error or "invalid stub"), False, INVALID_STUB
                )
                for change in changes
                if change.metadata is None
            )
        error: DependencyDownError | None = None
        if self.needs_documents and ready:
            try:
                ready = self.fetcher.fetch(ready, failures)
            except DependencyDownError as exc:
                error = exc
        prepared = [self._prepare(p, ready) for p in self.processors] if error is None else []
        return PreparedBatch(
            changes, ready, failures, error, time.perf_counter() - started, prepared
        )

    def _prepare(self, processor: Processor, ready: list[Change]) -> object:
        """What the processor prepares for these changes, or None (then it does all its
        work in `apply`, where a failure is classified as usual)."""
        if not ready or not isinstance(processor, BulkProcessor):
            return None
        try:
            return processor.prepare_changes(ready)
        except Exception as exc:  # noqa: BLE001 - apply does the work again and judges it
            log.debug("pillow %s: %s could not prepare: %s", self.name, processor.name, exc)
            return None

    def apply(self, prepared: PreparedBatch) -> BatchReport:
        """The half that writes: every processor on the ready changes, then the failures
        into the error queue. Raises `DependencyDownError` when the batch failed as a whole
        (its fetch, a processor, or the error queue); it may then be applied again (the
        failures of an attempt are not carried into the next)."""
        if prepared.error is not None:
            raise prepared.error
        failures = list(prepared.failures)
        ready = prepared.ready
        seconds: dict[str, float] = {}
        prepared_by = prepared.prepared or [None] * len(self.processors)
        for processor, ahead in zip(self.processors, prepared_by, strict=True):
            t0 = time.perf_counter()
            self.run_processor(processor, ready, failures, ahead)
            seconds[processor.name] = time.perf_counter() - t0
        self.queue(failures)
        n = len(prepared.changes)
        report = BatchReport(self.name, n, n, len(failures), 0.0, seconds)
        report.fetch_seconds = prepared.seconds
        return report

    def apply_with_backoff(
        self,
        prepared: PreparedBatch,
        seen: int,
        *,
        backoff: Backoff,
        max_retries: int | None,
        wait: Callable[[DependencyDownError, float], bool],
    ) -> tuple[BatchReport | None, int]:
        """Apply a batch, retrying while a dependency is down: the failure policy of a whole
        batch. ``wait(error, delay)`` sleeps before the next try and returns False when the
        caller is stopping; this then returns ``(None, attempts)`` and the batch is replayed
        on the next start. After ``max_retries`` the changes are queued as pending (unless
        the error queue is down too: then it keeps backing off), so an outage cannot stall
        a pillow forever.

        A retry fetches again only when the fetch was what failed; when a processor failed,
        the same fetched documents are applied again. So no document is fetched for this
        batch after the next batch fetched it (pipelined, the next one already is), and
        outputs never step back to an older version."""
        attempt = 0
        while True:
            try:
                return self.apply(prepared), attempt
            except DependencyDownError as exc:
                attempt += 1
                if max_retries is not None and attempt > max_retries:
                    log.error("pillow %s: batch failed %d times, queueing it", self.name, attempt)
                    changes = prepared.changes
                    try:
                        self.queue(Failure(c, exc.cause, True, exc.where) for c in changes)
                    except DependencyDownError as queue_down:
                        exc = queue_down  # the error queue is down too: keep backing off
                    else:
                        return BatchReport(
                            self.name, seen, len(changes), len(changes), 0.0
                        ), attempt
                if not wait(exc, backoff.delay(attempt)):
                    return None, attempt
                if prepared.error is not None:
                    prepared = self.prepare(prepared.changes)

    def queue(self, failures: Iterable[Failure]) -> None:
        """Put failures into the error queue (retryable ones on the retry schedule)."""
        failures = list(failures)
        if not failures:
            return
        unknown: dict[str, int] = {}
        for change, exc, _, where in failures:
            if isinstance(exc, UnknownDocumentStoreError):
                # A configuration error, not one per document: said once per store and batch.
                unknown[str(exc)] = unknown.get(str(exc), 0) + 1
                continue
            log.warning(
                "pillow %s: %s failed for %s at %s[%d]@%d: %s",
                self.name,
                where,
                change.id,
                change.topic,
                change.partition,
                change.offset,
                exc,
            )
        for message, n in unknown.items():
            log.error(
                "pillow %s: %s; %d %s queued until it is registered",
                self.name,
                message,
                n,
                "change" if n == 1 else "changes",
            )
        try:
            self.error_queue.add_many(self.name, failures, policy=self.retry_policy)
        except Exception as exc:
            # The queue's database is a dependency like any other: when it is down, the batch
            # backs off (and its checkpoint waits) instead of the pillow stopping.
            if is_dependency_failure(exc):
                raise DependencyDownError("error queue", exc) from exc
            raise

    def run_processor(
        self,
        processor: Processor,
        changes: list[Change],
        failures: list[Failure],
        prepared: object = None,
    ) -> None:
        """Run one processor on the ready changes (with what it ``prepared`` for them, if
        anything). Failures that belong to a document are added to ``failures`` with their
        own exception; one that belongs to a dependency raises `DependencyDownError`,
        whatever the batch size. A bulk call that fails as a whole for an unclear reason is
        isolated: re-run change by change, so only the bad documents fail."""
        if not changes:
            return
        name = processor.name
        if isinstance(processor, BulkProcessor):
            try:
                if prepared is None:
                    result = processor.process_changes(changes)
                else:
                    result = processor.process_prepared(changes, prepared)
            except Exception as exc:  # noqa: BLE001 - classified, then isolated
                self._raise_if_dependency(processor, exc)
                log.info("pillow %s: bulk %s failed, isolating change by change", self.name, name)
            else:
                for failure in result:
                    if failure.retryable:
                        self._raise_if_dependency(processor, failure.exception)
                failures.extend(failure.at(name) for failure in result)
                return
        errors: list[Failure] = []
        for change in changes:
            try:
                processor.process_change(change)
            except Exception as exc:  # noqa: BLE001 - one bad change must not stop the pillow
                errors.append(Failure(change, exc, True, name))
        for failed in errors:
            self._raise_if_dependency(processor, failed.exception)
        failures.extend(errors)

    @staticmethod
    def _raise_if_dependency(processor: Processor, exc: BaseException) -> None:
        if is_dependency_failure(exc, processor.dependency_errors, processor.document_errors):
            raise DependencyDownError(processor.name, exc) from exc

    # -- the error queue ---------------------------------------------------------------

    def retry_errors(
        self, limit: int = 500, now: float | None = None, ids: Sequence[int] | None = None
    ) -> tuple[int, int]:
        """Re-process due error-queue entries (at most ``limit``, read in one page), or with
        ``ids`` exactly those entries of this pillow, due or not. Returns (succeeded, failed
        again)."""
        if ids is not None:
            found = (self.error_queue.get(i) for i in ids)
            records = [r for r in found if r is not None and r.pillow == self.name]
        else:
            records = self.error_queue.due(self.name, limit=limit, now=now)
        ok = failed = 0
        for record in records:
            if self.retry(record):
                ok += 1
            else:
                failed += 1
        return ok, failed

    def retry(self, record: ErrorRecord) -> bool:
        """Re-process one error-queue entry through the processor that failed (all of them
        when the fetch or the stub failed); True when it went through."""
        change = Change.from_raw(
            record.topic, record.partition, record.offset, record.stub, record.document_id
        )
        if change.metadata is None:
            self.error_queue.record_failure(
                record,
                InvalidChangeError(change.error or "invalid stub"),
                self.retry_policy,
                retryable=False,
            )
            return False
        # A retried change says so: processors can tell a retry from a first try.
        change.metadata.attempts = max(change.metadata.attempts, record.attempts)
        failures: list[Failure] = []
        # Stored names are bounded: compare in the same form.
        processors = [p for p in self.processors if bounded(p.name) == record.processor]
        if not processors and record.processor not in (FETCH, INVALID_STUB):
            # A part of a processor (one data source of a ReportTablesProcessor).
            parts = (p.for_failure(record.processor) for p in self.processors)
            processors = [p for p in parts if p is not None][:1]
        if record.processor in (FETCH, INVALID_STUB) or not processors:
            processors = self.processors
        try:
            ready = [change]
            if any(p.needs_documents for p in processors):
                ready = self.fetcher.fetch([change], failures)
            for processor in processors:
                self.run_processor(processor, ready, failures)
        except DependencyDownError as exc:
            failures.append(Failure(change, exc.cause, True, exc.where))
        if failures:
            # What retrying cannot fix (a refused document, an invalid stub) stays parked.
            retryable = all(f.retryable for f in failures)
            self.error_queue.record_failure(
                record, failures[0].exception, self.retry_policy, retryable=retryable
            )
            return False
        self.error_queue.resolve(record.id)
        return True
