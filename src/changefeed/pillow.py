"""The pillow runtime: feed → batch → dedupe → bulk fetch → processors → checkpoint.

The order of those steps carries the delivery guarantee: a checkpoint is written only after
every processor finished the batch before it, so a crash at any point replays, never skips
(at least once). Failures of single changes go to the error queue and the pillow moves on;
a batch that fails as a whole (a dependency is down) is retried with backoff instead.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from types import FrameType
from typing import Any

from changefeed import gctune
from changefeed.backends.base import ChangeFeed
from changefeed.change import Change, InvalidChangeError, TopicPartition
from changefeed.checkpoints import CheckpointStore
from changefeed.errors import FETCH, INVALID_STUB, ErrorQueue, ErrorRecord, RetryPolicy, next_delay
from changefeed.identifiers import object_name
from changefeed.processors.base import BulkProcessor, Processor
from changefeed.stores.base import (
    DocumentDeleted,
    DocumentNotFoundError,
    DocumentStore,
    rev_number,
)
from changefeed.stores.registry import DocumentStoreRegistry

log = logging.getLogger("changefeed.pillow")

_id_of = attrgetter("id")
_metadata_of = attrgetter("metadata")
_partition_of = attrgetter("topic", "partition")
_offset_of = attrgetter("offset")


def _latest_per_document(changes: list[Change]) -> list[Change]:
    """One change per document (its latest, in the place of its latest), so a document
    changed many times in a batch is fetched and processed once. Checked in a C loop first:
    when no document id repeats (the usual case) there is nothing to drop."""
    if len(set(map(_id_of, changes))) == len(changes):
        return changes
    latest: dict[Any, Change] = {}
    for change in changes:
        meta = change.metadata
        key: Any = (
            (meta.data_source_type, meta.data_source_name, change.id)
            if meta is not None
            else (change.topic, change.partition, change.offset)  # never merged
        )
        if key in latest:
            del latest[key]
        latest[key] = change
    return list(latest.values())


def _next_offsets(changes: list[Change]) -> dict[TopicPartition, int]:
    """The checkpoint after ``changes``: per partition, the offset after the last one read
    (offsets rise within a partition, so the last seen is the highest)."""
    last = dict(zip(map(_partition_of, changes), map(_offset_of, changes), strict=True))
    return {TopicPartition(topic, part): offset + 1 for (topic, part), offset in last.items()}


Failure = tuple[Change, str, BaseException, bool]
"""(change, processor name, exception, retryable)"""


class StaleReadError(RuntimeError):
    """The document store returned a version older than the stub announced."""


class DependencyDownError(RuntimeError):
    """A whole batch failed the same way: something the pillow depends on is unavailable."""

    def __init__(self, where: str, cause: BaseException) -> None:
        super().__init__(f"{where}: {type(cause).__name__}: {cause}")
        self.where = where
        self.cause = cause


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


class PillowListener:
    """Hooks for observers; every method is optional and called once per batch at most."""

    def on_batch(self, pillow: Pillow, report: BatchReport) -> None:
        """A batch finished and its checkpoint was written."""

    def on_dependency_down(self, pillow: Pillow, error: DependencyDownError, delay: float) -> None:
        """A batch failed as a whole; the pillow sleeps ``delay`` and retries."""


def stride(
    partitions: Iterable[TopicPartition], num_processes: int, process_number: int
) -> list[TopicPartition]:
    """Static partition assignment: process k of N takes every N-th of the sorted partitions."""
    if num_processes < 1:
        raise ValueError("num_processes must be at least 1")
    if not 0 <= process_number < num_processes:
        raise ValueError(f"process_number must be in [0, {num_processes - 1}]")
    return sorted(partitions)[process_number::num_processes]


class Pillow:
    """A named subscriber: a change feed, processors and a checkpoint.

    ``ConstructedPillow`` is the same class, under the name users of pillowtop know.

    A batch that fails as a whole is retried with backoff (1 s doubling to 60 s) up to
    ``max_batch_retries`` times (about five minutes with the default 10); then its changes go
    to the error queue as pending, so a few changes failing alike cannot stall the pillow
    forever. ``None`` retries until the dependency is back.
    """

    def __init__(
        self,
        name: str,
        change_feed: ChangeFeed,
        processors: Processor | Sequence[Processor],
        *,
        checkpoints: CheckpointStore,
        error_queue: ErrorQueue | None = None,
        document_stores: DocumentStoreRegistry | None = None,
        batch_size: int = 1000,
        max_wait: float = 1.0,
        retry_policy: RetryPolicy | None = None,
        stale_read_retries: int = 2,
        stale_read_delay: float = 0.05,
        max_batch_retries: int | None = 10,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] | None = None,
        reindex_stores: Sequence[DocumentStore] | None = None,
    ) -> None:
        self.name = object_name(name, "pillow name")
        self.change_feed = change_feed
        self.processors: list[Processor] = (
            [processors] if isinstance(processors, Processor) else list(processors)
        )
        if not self.processors:
            raise ValueError("a pillow needs at least one processor")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.checkpoints = checkpoints
        self.error_queue = error_queue or ErrorQueue(checkpoints.engine, clock=clock)
        self.document_stores = document_stores or DocumentStoreRegistry()
        self.batch_size = batch_size
        self.max_wait = max_wait
        self.retry_policy = retry_policy or self.error_queue.policy
        self.stale_read_retries = stale_read_retries
        self.stale_read_delay = stale_read_delay
        self.max_batch_retries = max_batch_retries
        self.clock = clock
        self.reindex_stores: list[DocumentStore] | None = (
            list(reindex_stores) if reindex_stores is not None else None
        )
        """The stores `changefeed reindex` rebuilds this pillow's output from (None: every
        store registered in ``document_stores``)."""
        self.listeners: list[PillowListener] = []
        self.needs_documents = any(p.needs_documents for p in self.processors)
        self._stop = threading.Event()
        self._sleep = sleep or self._interruptible_sleep
        self._batch: list[Change] = []
        """Changes read since the last checkpoint, in log order (deduplicated at flush)."""
        self._pending: dict[TopicPartition, int] = {}
        """The checkpoint once the batch is done."""
        self._seen = 0
        self._started = 0.0
        self._restart = False
        self.partition_check_interval = 2.0
        """Seconds between checks for new topics or partitions while idle."""

    # -- lifecycle ---------------------------------------------------------------------

    def bootstrap(self) -> None:
        """Run every processor's one-time setup (create index, table); idempotent."""
        for processor in self.processors:
            processor.bootstrap()

    def stop(self) -> None:
        """Ask the pillow to stop after the batch in hand (thread- and signal-safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the pillow gracefully after the current batch."""

        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("pillow %s: signal %s, stopping after the current batch", self.name, signum)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _interruptible_sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def assigned_partitions(
        self, num_processes: int = 1, process_number: int = 0
    ) -> list[TopicPartition]:
        return stride(self.change_feed.topic_partitions(), num_processes, process_number)

    def starting_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Where to read from: our checkpoint, or the beginning for a partition never read."""
        saved = self.checkpoints.get(self.name)
        return {tp: saved.get(tp, 0) for tp in partitions}

    # -- the main loop -----------------------------------------------------------------

    def run(
        self,
        *,
        forever: bool = True,
        num_processes: int = 1,
        process_number: int = 0,
    ) -> int:
        """Process changes until stopped (or, without ``forever``, until caught up).
        Returns the number of changes read."""
        self._stop.clear()
        feed = self.change_feed
        on_reset = getattr(feed, "on_offset_reset", "missing")
        if on_reset is None:
            feed.on_offset_reset = self._record_offset_reset  # type: ignore[attr-defined]
        set_listener = getattr(feed, "set_rebalance_listener", None)
        total = 0
        with gctune.raised_threshold():
            if set_listener is not None and getattr(feed, "uses_consumer_group", False):
                set_listener(self)
                return self._consume(self._read(feed, {}, forever))
            # Static assignment: re-done when topics or partitions appear while running,
            # so a pillow started before its topics exist still reads them.
            while True:
                assigned = self.assigned_partitions(num_processes, process_number)
                since = self.starting_offsets(assigned)
                changed = self._assignment_watch(set(assigned), num_processes, process_number)
                total += self._consume(
                    self._read(feed, since, forever), changed if forever else None
                )
                if self._stop.is_set() or not forever or not self._restart:
                    return total

    def _assignment_watch(
        self, assigned: set[TopicPartition], num_processes: int, process_number: int
    ) -> Callable[[], bool]:
        """A check, run when the feed is idle, of whether the partition assignment changed."""
        last = time.monotonic()

        def changed() -> bool:
            nonlocal last
            now = time.monotonic()
            if now - last < self.partition_check_interval:
                return False
            last = now
            return set(self.assigned_partitions(num_processes, process_number)) != assigned

        return changed

    @staticmethod
    def _read(
        feed: ChangeFeed, since: Mapping[TopicPartition, int], forever: bool
    ) -> Iterator[Change | list[Change] | None]:
        """The feed's changes, as lists where the feed can hand them over that way
        (``iter_change_batches``, e.g. Kafka: one list per fetch)."""
        batches = getattr(feed, "iter_change_batches", None)
        if batches is not None:
            return batches(since, forever)
        return feed.iter_changes(since, forever)

    def _consume(
        self,
        changes: Iterator[Change | list[Change] | None],
        restart_check: Callable[[], bool] | None = None,
    ) -> int:
        """Batch, dedupe and flush what the feed yields: lists of changes (both built-in
        backends hand over one list per read) or single changes (other feeds)."""
        self._restart = False
        total = 0
        stop = self._stop
        for item in changes:
            if item is None:  # the feed is idle: flush a partial batch, maybe re-assign
                if self._seen and not self.flush():
                    break
                if stop.is_set():
                    break
                if restart_check is not None and restart_check():
                    self._restart = True
                    break
                continue
            added, stop_reading = self._add_list(item if isinstance(item, list) else [item])
            total += added
            if stop_reading:
                break
        else:
            if self._seen:
                self.flush()
        return total

    def _add_list(self, changes: list[Change]) -> tuple[int, bool]:
        """Add a feed's list of changes to the batch in hand, flushing whenever it is full
        (or ``max_wait`` passed, or the pillow is stopping). Returns (changes added, whether
        to stop reading); like the one-by-one path, what is not added is replayed later.
        Dedupe waits for `flush`, once per batch."""
        batch_size = self.batch_size
        stop = self._stop
        n = len(changes)
        i = 0
        while i < n:
            # Re-read per slice: a flush (here, or on a rebalance inside the feed) starts a
            # new batch.
            batch = self._batch
            seen = self._seen
            if not seen:
                self._started = time.monotonic()
            room = batch_size - seen
            part = changes if i == 0 and room >= n else changes[i : i + room]
            batch += part
            taken = len(part)
            i += taken
            # Where the checkpoint goes after this part: where the feed says it stands once
            # the whole list is in (a `ChangeList`), else worked out from the changes.
            ends = getattr(changes, "next_offsets", None) if i == n else None
            self._pending.update(ends if ends is not None else _next_offsets(part))
            self._seen = seen = seen + taken
            if (
                seen < batch_size
                and time.monotonic() - self._started < self.max_wait
                and not stop.is_set()
            ):
                continue
            if not self.flush() or stop.is_set():
                return i, True
        return n, False

    def flush(self) -> bool:
        """Process the batch in hand and write its checkpoint. False when stopped before the
        batch could be finished (it is then replayed on the next start)."""
        seen = self._seen
        changes = _latest_per_document(self._batch)
        started = time.perf_counter()
        attempt = 0
        while True:
            try:
                report = self.process_batch(changes)
                break
            except DependencyDownError as exc:
                attempt += 1
                if self.max_batch_retries is not None and attempt > self.max_batch_retries:
                    log.error(
                        "pillow %s: batch failed %d times, queueing its changes", self.name, attempt
                    )
                    self._queue_failures([(c, exc.where, exc.cause, True) for c in changes])
                    report = BatchReport(self.name, seen, len(changes), len(changes), 0.0)
                    break
                delay = next_delay(attempt)
                log.warning("pillow %s: %s; retrying the batch in %.1fs", self.name, exc, delay)
                for listener in self.listeners:
                    listener.on_dependency_down(self, exc, delay)
                if self._stop.is_set():
                    return False
                self._sleep(delay)
                if self._stop.is_set():
                    return False
        checkpoint = self._pending
        self.checkpoints.commit(self.name, checkpoint)
        commit_offsets = getattr(self.change_feed, "commit_offsets", None)
        if commit_offsets is not None:  # e.g. Kafka: mirror for standard lag tools
            commit_offsets(checkpoint)
        self._batch = []
        self._pending = {}
        self._seen = 0
        report.changes = seen
        report.retries = attempt
        report.duration = time.perf_counter() - started
        report.checkpoint = checkpoint
        for listener in self.listeners:
            listener.on_batch(self, report)
        return True

    # -- rebalancing feeds (Kafka consumer groups) ----------------------------------------

    def on_assign(self, partitions: Sequence[TopicPartition]) -> Mapping[TopicPartition, int]:
        return self.starting_offsets(partitions)

    def on_revoke(self, partitions: Sequence[TopicPartition]) -> None:
        """Finish and checkpoint the batch in hand before the partitions move away."""
        if self._seen:
            self.flush()

    def _record_offset_reset(self, tp: TopicPartition, needed: int, earliest: int) -> None:
        log.warning(
            "pillow %s: offset %d of %s was removed by retention; jumping to %d",
            self.name,
            needed,
            tp,
            earliest,
        )
        self.checkpoints.set(
            self.name,
            {tp: earliest},
            reason=f"offset {needed} removed by retention; jumped to earliest {earliest}",
        )

    # -- one batch ---------------------------------------------------------------------

    def process_batch(self, changes: Sequence[Change]) -> BatchReport:
        """Fetch documents once, run every processor, queue failures. Raises
        `DependencyDownError` when the batch failed as a whole."""
        failures: list[Failure] = []
        if all(map(_metadata_of, changes)):  # valid stubs only (checked in C)
            ready = list(changes)
        else:
            ready = [change for change in changes if change.metadata is not None]
            failures.extend(
                (change, INVALID_STUB, InvalidChangeError(change.error or "invalid stub"), False)
                for change in changes
                if change.metadata is None
            )
        if self.needs_documents and ready:
            ready = self._fetch(ready, failures)
        seconds: dict[str, float] = {}
        for processor in self.processors:
            t0 = time.perf_counter()
            self._run_processor(processor, ready, failures)
            seconds[processor.name] = time.perf_counter() - t0
        self._queue_failures(failures)
        return BatchReport(self.name, len(changes), len(changes), len(failures), 0.0, seconds)

    def _queue_failures(self, failures: list[Failure]) -> None:
        if not failures:
            return
        for change, where, exc, _ in failures:
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
        retryable = [(c, w, e) for c, w, e, r in failures if r]
        final = [(c, w, e) for c, w, e, r in failures if not r]
        self.error_queue.add_many(self.name, retryable, policy=self.retry_policy)
        self.error_queue.add_many(self.name, final, retryable=False, policy=self.retry_policy)

    def _run_processor(
        self, processor: Processor, changes: list[Change], failures: list[Failure]
    ) -> None:
        if not changes:
            return
        name = processor.name
        if isinstance(processor, BulkProcessor):
            try:
                result = processor.process_changes(changes)
            except Exception:  # noqa: BLE001 - retried change by change below
                log.info("pillow %s: bulk %s failed, retrying change by change", self.name, name)
            else:
                if result:
                    if all(f.retryable for f in result):
                        self._check_whole_batch(name, len(changes), [f.exception for f in result])
                    failures.extend((f.change, name, f.exception, f.retryable) for f in result)
                return
        errors: list[Failure] = []
        for change in changes:
            try:
                processor.process_change(change)
            except Exception as exc:  # noqa: BLE001 - one bad change must not stop the pillow
                errors.append((change, name, exc, True))
        if errors:
            self._check_whole_batch(name, len(changes), [e[2] for e in errors])
            failures.extend(errors)

    @staticmethod
    def _check_whole_batch(where: str, size: int, errors: list[BaseException]) -> None:
        if size > 1 and len(errors) == size and len({type(e) for e in errors}) == 1:
            raise DependencyDownError(where, errors[0])

    def _fetch(self, changes: list[Change], failures: list[Failure]) -> list[Change]:
        """Bulk-fetch documents, once per store, for every change that lacks one."""
        ready: list[Change] = []
        by_store: dict[int, tuple[DocumentStore, list[Change]]] = {}
        for change in changes:
            meta = change.metadata
            assert meta is not None
            if change.has_document:
                ready.append(change)
                continue
            try:
                store = self.document_stores.for_change(meta)
            except LookupError as exc:
                failures.append((change, FETCH, exc, True))
                continue
            change.set_store(store)
            if change.deleted:
                change.set_document(None)
                ready.append(change)
                continue
            by_store.setdefault(id(store), (store, []))[1].append(change)
        for store, group in by_store.values():
            pending = group
            for attempt in range(self.stale_read_retries + 1):
                if attempt:
                    self._sleep(self.stale_read_delay)
                try:
                    found = store.get_documents([c.id for c in pending])
                except Exception as exc:  # noqa: BLE001 - the store as a whole is failing
                    raise DependencyDownError(
                        f"{FETCH} {store.data_source_type}/{store.data_source_name}", exc
                    ) from exc
                stale: list[Change] = []
                for change in pending:
                    doc = found.get(change.id)
                    if doc is None:
                        failures.append(
                            (
                                change,
                                FETCH,
                                DocumentNotFoundError(
                                    f"document {change.id!r} not found in "
                                    f"{store.data_source_type}/{store.data_source_name}"
                                ),
                                True,
                            )
                        )
                    elif doc is DocumentDeleted:
                        change.deleted = True
                        change.set_document(None)
                        ready.append(change)
                    elif isinstance(doc, dict) and self._is_stale(store, change, doc):
                        stale.append(change)
                    else:
                        change.set_document(doc)  # type: ignore[arg-type]
                        ready.append(change)
                pending = stale
                if not pending:
                    break
            for change in pending:
                meta = change.metadata
                assert meta is not None
                failures.append(
                    (
                        change,
                        FETCH,
                        StaleReadError(
                            f"document {change.id!r} is older than its change "
                            f"(version={meta.version} rev={meta.document_rev})"
                        ),
                        True,
                    )
                )
        return ready

    @staticmethod
    def _is_stale(store: DocumentStore, change: Change, doc: dict[str, Any]) -> bool:
        meta = change.metadata
        assert meta is not None
        wanted = meta.version if meta.version is not None else rev_number(meta.document_rev)
        if wanted is None:
            return False
        have = store.document_version(doc)
        return have is not None and have < wanted

    # -- the error queue ---------------------------------------------------------------

    def retry_errors(self, limit: int = 500, now: float | None = None) -> tuple[int, int]:
        """Re-process due error-queue entries. Returns (succeeded, failed again)."""
        ok = failed = 0
        for record in self.error_queue.due(self.name, limit=limit, now=now):
            if self._retry_one(record):
                ok += 1
            else:
                failed += 1
        return ok, failed

    def _retry_one(self, record: ErrorRecord) -> bool:
        change = Change.from_raw(
            record.topic, record.partition, record.offset, record.stub, record.document_id
        )
        if change.metadata is None:
            self.error_queue.record_failure(
                record, InvalidChangeError(change.error or "invalid stub"), self.retry_policy
            )
            return False
        failures: list[Failure] = []
        processors = [p for p in self.processors if p.name == record.processor]
        if record.processor in (FETCH, INVALID_STUB) or not processors:
            processors = self.processors
        try:
            ready = [change]
            if any(p.needs_documents for p in processors):
                ready = self._fetch([change], failures)
            for processor in processors:
                self._run_processor(processor, ready, failures)
        except DependencyDownError as exc:
            failures.append((change, exc.where, exc.cause, True))
        if failures:
            self.error_queue.record_failure(record, failures[0][2], self.retry_policy)
            return False
        self.error_queue.resolve(record.id)
        return True


ConstructedPillow = Pillow
