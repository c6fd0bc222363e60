"""The pillow: feed → batch → dedupe → bulk fetch → processors → checkpoint.

This module is the loop and its batch policy. The order of those steps carries the delivery
guarantee: a checkpoint is written only after every processor finished the batch before it,
so a crash at any point replays, never skips (at least once). What happens to one batch
(fetch, processors, failures) is `BatchRunner`'s job; what the pillow may ask of its feed is
declared on `ChangeFeed`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

from changefeed import gctune
from changefeed.backends.base import ChangeFeed, ChangeList
from changefeed.backoff import DEPENDENCY_BACKOFF, Backoff
from changefeed.batch import BatchReport, BatchRunner
from changefeed.batch_buffer import DEFAULT_BATCHING, BatchBuffer, BatchPolicy, Cut
from changefeed.change import TopicPartition
from changefeed.checkpoints import CheckpointStore
from changefeed.clock import SYSTEM_CLOCK, Clock
from changefeed.errors import ErrorQueue, RetryPolicy
from changefeed.failures import DependencyDownError
from changefeed.identifiers import object_name
from changefeed.lifecycle import Health, StopFlag
from changefeed.pipeline import Pipeline
from changefeed.processors.base import Processor
from changefeed.runner import stride
from changefeed.stores.base import DocumentStore
from changefeed.stores.fetch import DocumentFetcher
from changefeed.stores.registry import DocumentStoreRegistry

__all__ = [
    "BatchPolicy",
    "BatchReport",
    "ConstructedPillow",
    "DependencyDownError",
    "Pillow",
    "PillowListener",
    "RetrySettings",
    "stride",
]

log = logging.getLogger("changefeed.pillow")

PIPELINE_ENV = "CHANGEFEED_PIPELINE"
"""``1``/``on`` or ``0``/``off`` overrides the automatic choice of pillows built with
``pipeline=None`` (e.g. to run a test suite pipelined, or to switch it off in production
without a code change)."""


class PillowListener:
    """Hooks for observers; every method is optional and called once per batch at most."""

    def on_batch(self, pillow: Pillow, report: BatchReport) -> None:
        """A batch finished and its checkpoint was written."""

    def on_dependency_down(self, pillow: Pillow, error: DependencyDownError, delay: float) -> None:
        """A batch failed as a whole; the pillow sleeps ``delay`` and retries."""


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """How a pillow retries: documents in the error queue (``retry_policy``; None: the
    queue's own), whole batches while a dependency is down (``batch_backoff``, at most
    ``max_batch_retries`` times; None retries until it is back), and stale reads from a
    document store (``stale_read_retries`` more reads, ``stale_read_delay`` apart)."""

    retry_policy: RetryPolicy | None = None
    max_batch_retries: int | None = 10
    batch_backoff: Backoff = DEPENDENCY_BACKOFF
    stale_read_retries: int = 2
    stale_read_delay: float = 0.05


DEFAULT_RETRIES = RetrySettings()


def preferred_batching(processors: Sequence[Processor]) -> BatchPolicy:
    """The default batching, with the largest `Processor.batch_size_hint` of the processors
    when it is above the default batch size (a report processor of a thousand data sources
    writes a statement per table a batch touches: fuller batches share them out)."""
    # Each hint read once: a report processor's reads its data sources when none are loaded.
    hints = [hint for p in processors if (hint := p.batch_size_hint)]
    return replace(DEFAULT_BATCHING, batch_size=max([DEFAULT_BATCHING.batch_size, *hints]))


class Pillow:
    """A named subscriber: a change feed, processors and a checkpoint.

    ``ConstructedPillow`` is the same class, under the name users of pillowtop know.

    ``batching`` (`BatchPolicy`) says when the batch in hand is due: full, ``max_wait``
    passed, or (adaptive, the default) as soon as a read caught up with the log. Not given,
    it is the default, with a larger ``batch_size`` when a processor asks for one
    (`Processor.batch_size_hint`, `preferred_batching`).

    Pipelining (``pipeline``): a reader thread reads and fetches batch N+1 while the main
    thread runs the processors of batch N, so the database's and Python's waits overlap.
    Batches are still applied and checkpointed one at a time, in order: checkpoint N is
    written only after N finished, and a document of N+1 is processed only after N. ``None``
    (the default) pipelines when a processor needs documents (then fetching overlaps
    processing; `PIPELINE_ENV` overrides that choice), ``True``/``False`` force it. A
    consumer-group feed is never pipelined: partitions moving away would have to wait for
    both batches.

    A batch whose dependency is down is retried with backoff (1 s doubling to 60 s) up to
    ``retries.max_batch_retries`` times (about five minutes with the default 10); then its
    changes go to the error queue as pending, so an outage cannot stall the pillow forever.
    ``None`` retries until the dependency is back (`RetrySettings`).

    ``clock`` gives batching, health, backoff sleeps and the default error queue their time;
    a test passes a `changefeed.testing.clock.FakeClock` so that nothing waits.
    """

    scalable = True
    """Partitions can be split across processes (static striding or a consumer group)."""

    def __init__(
        self,
        name: str,
        change_feed: ChangeFeed,
        processors: Processor | Sequence[Processor],
        *,
        checkpoints: CheckpointStore,
        error_queue: ErrorQueue | None = None,
        document_stores: DocumentStoreRegistry | None = None,
        batching: BatchPolicy | None = None,
        retries: RetrySettings = DEFAULT_RETRIES,
        clock: Clock = SYSTEM_CLOCK,
        reindex_stores: Sequence[DocumentStore] | None = None,
        pipeline: bool | None = None,
    ) -> None:
        self.name = object_name(name, "pillow name")
        self.change_feed = change_feed
        self.processors: list[Processor] = (
            [processors] if isinstance(processors, Processor) else list(processors)
        )
        if not self.processors:
            raise ValueError("a pillow needs at least one processor")
        self.checkpoints = checkpoints
        self.error_queue = error_queue or ErrorQueue(checkpoints.engine, clock=clock)
        self.document_stores = document_stores or DocumentStoreRegistry()
        if batching is None:  # nothing said: the default, or what the processors want
            batching = preferred_batching(self.processors)
        self.batching = batching
        self.pipeline = pipeline
        """Read and fetch the next batch while this one is processed (None: automatic, see
        `pipelined`)."""
        self.retries = retries
        self.retry_policy = retries.retry_policy or self.error_queue.policy
        self.clock = clock
        """Time for batching (``max_wait``), health and backoff; injectable so tests need
        not sleep."""
        self.reindex_stores: list[DocumentStore] | None = (
            list(reindex_stores) if reindex_stores is not None else None
        )
        """The stores `changefeed reindex` rebuilds this pillow's output from (None: every
        store registered in ``document_stores``)."""
        self.listeners: list[PillowListener] = []
        self._stop = StopFlag()
        self.fetcher = DocumentFetcher(
            self.document_stores,
            stale_read_retries=retries.stale_read_retries,
            stale_read_delay=retries.stale_read_delay,
            clock=clock,
            wake=self._stop,
        )
        self.runner = BatchRunner(
            self.name,
            self.processors,
            fetcher=self.fetcher,
            error_queue=self.error_queue,
            retry_policy=self.retry_policy,
        )
        self.buffer = BatchBuffer(batching, clock)
        """The batch in hand (read since the last checkpoint)."""
        self._pipe: Pipeline[Cut] | None = None
        self._restart = False
        self._health = Health(self.name, "pillow")
        self.partition_check_interval = 2.0
        """Seconds between checks for new topics or partitions while idle."""

    @property
    def needs_documents(self) -> bool:
        return self.runner.needs_documents

    @property
    def pipelined(self) -> bool:
        """Whether `run` reads ahead in a reader thread: ``pipeline`` if set, else the
        `PIPELINE_ENV` override, else when a processor needs documents (fetching then
        overlaps processing; with stub-only processors there is little to overlap). Never
        for a consumer-group feed."""
        if self.change_feed.uses_consumer_group:
            return False
        if self.pipeline is not None:
            return self.pipeline
        forced = os.environ.get(PIPELINE_ENV, "").strip().lower()
        if forced in ("1", "on", "true", "yes"):
            return True
        if forced in ("0", "off", "false", "no"):
            return False
        return self.needs_documents

    # -- lifecycle ---------------------------------------------------------------------

    def bootstrap(self) -> None:
        """Run every processor's one-time setup (create index, table); idempotent."""
        for processor in self.processors:
            processor.bootstrap()

    def stop(self) -> None:
        """Ask the pillow to stop after the batch in hand (thread- and signal-safe).
        Pipelined, a batch read ahead is dropped: no checkpoint covers it, so it is read
        again on the next start."""
        self._stop.set()
        pipe = self._pipe
        if pipe is not None:
            pipe.stop()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def health(self) -> Health:
        return self._health

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
        feed.set_offset_reset_handler(self._record_offset_reset)
        self._health.state = "running"
        total = 0
        try:
            with gctune.raised_threshold():
                if feed.uses_consumer_group:
                    feed.set_rebalance_listener(self)
                    return self._consume_group(feed, forever)
                consume = self._consume_pipelined if self.pipelined else self._consume
                # Static assignment: re-done when topics or partitions appear while running,
                # so a pillow started before its topics exist still reads them.
                while True:
                    assigned = self.assigned_partitions(num_processes, process_number)
                    since = self.starting_offsets(assigned)
                    changed = self._assignment_watch(set(assigned), num_processes, process_number)
                    total += consume(
                        feed.iter_change_batches(since, forever), changed if forever else None
                    )
                    if self._stop.is_set() or not forever or not self._restart:
                        return total
        finally:
            self._health.state = "stopped"

    def _consume_group(self, feed: ChangeFeed, forever: bool) -> int:
        """Read as a member of the feed's consumer group, and leave the group however the
        reading ends (stopped, caught up, or an exception), so its partitions move to the
        other members at once. A batch not finished by then is not checkpointed: the
        listener is detached first, so leaving processes nothing more, and whoever gets
        the partitions reads it again."""
        try:
            return self._consume(feed.iter_change_batches({}, forever))
        finally:
            feed.set_rebalance_listener(None)
            feed.leave_group()

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

    def _consume(
        self,
        lists: Iterator[ChangeList | None],
        restart_check: Callable[[], bool] | None = None,
        stop: StopFlag | None = None,
        emit: Callable[[], bool] | None = None,
    ) -> int:
        """Fill the batch in hand from the feed's lists (``None`` means the feed is idle) and
        hand each batch that is due to ``emit``: `flush` (in turn), or `_hand_over`
        (pipelined)."""
        self._restart = False
        total = 0
        stop = stop or self._stop
        emit = emit or self.flush
        buffer = self.buffer
        for item in lists:
            if item is None:  # the feed is idle: flush a partial batch, maybe re-assign
                if buffer.count and not emit():
                    break
                if stop.is_set():
                    break
                if restart_check is not None and restart_check():
                    self._restart = True
                    break
                continue
            added, stop_reading = buffer.add(item, emit, stop)
            total += added
            if stop_reading:
                break
        else:
            if buffer.count:
                emit()
        return total

    def flush(self) -> bool:
        """Process the batch in hand and write its checkpoint. False when stopped before the
        batch could be finished (it is then replayed on the next start)."""
        return self._finish(self.buffer.cut())

    def _finish(self, cut: Cut, waited: float = 0.0) -> bool:
        """Apply one batch (`BatchRunner.apply_with_backoff`: backing off while a dependency
        is down) and write its checkpoint. False when stopped before it was done."""
        try:
            for tp, needed, earliest in cut.resets:
                self._write_offset_reset(tp, needed, earliest)
            started = time.perf_counter()
            report, attempt = self.runner.apply_with_backoff(
                cut.prepared or self.runner.prepare(cut.changes),
                cut.seen,
                backoff=self.retries.batch_backoff,
                max_retries=self.retries.max_batch_retries,
                wait=self._wait_for_dependency,
            )
        finally:
            if cut.done is not None and self._pipe is not None:
                self._pipe.notify(cut.done)
        if report is None:
            return False
        checkpoint = cut.offsets
        moved = self.checkpoints.commit(self.name, checkpoint)
        if moved:  # an operator moved these while we ran: keep their value, re-read from it
            log.warning("pillow %s: checkpoint moved by someone else: %s", self.name, moved)
            checkpoint = {tp: off for tp, off in checkpoint.items() if tp not in moved}
        self.change_feed.commit_offsets(checkpoint)  # e.g. Kafka: mirror for lag tools
        report.changes = cut.seen
        report.retries = attempt
        report.duration = time.perf_counter() - started
        report.checkpoint = checkpoint
        report.waited = waited
        health = self._health
        health.state = "running"
        health.error = None
        health.processed += max(cut.seen - report.failures, 0)  # queued is not processed
        health.last_progress_at = self.clock.time()
        for listener in self.listeners:
            listener.on_batch(self, report)
        if moved:  # the loop re-reads the checkpoints (`run` restarts on ``_restart``)
            self._restart = True
            return False
        return True

    def _wait_for_dependency(self, error: DependencyDownError, delay: float) -> bool:
        """Between two tries of a batch whose dependency is down: tell, then sleep. False
        when stopping (the batch is replayed on the next start)."""
        log.warning("pillow %s: %s; retrying the batch in %.1fs", self.name, error, delay)
        self._health.state = "backing-off"
        self._health.error = str(error)
        for listener in self.listeners:
            listener.on_dependency_down(self, error, delay)
        if self._stop.is_set():
            return False
        self.clock.sleep(delay, self._stop)
        return not self._stop.is_set()

    # -- the pipelined run -------------------------------------------------------------

    def _consume_pipelined(
        self,
        lists: Iterator[ChangeList | None],
        restart_check: Callable[[], bool] | None = None,
    ) -> int:
        """`_consume` in a `Pipeline` reader thread that also fetches each batch
        (`_hand_over`), while this thread applies the batches and writes their checkpoints,
        one at a time, in order. Returns the number read once everything handed over was
        applied (or dropped, when stopping)."""

        def read(pipe: Pipeline[Cut]) -> int:
            try:
                return self._consume(lists, restart_check, pipe.stopping, self._hand_over)
            finally:
                close = getattr(lists, "close", None)
                if close is not None:
                    close()  # the feed's own clean-up runs in the thread that read it

        pipe: Pipeline[Cut] = Pipeline(self.name, read)
        self._pipe = pipe
        buffer = self.buffer
        buffer.clear()
        buffer.take_resets()
        if self._stop.is_set():
            pipe.stop()
        pipe.start()
        ended = False
        try:
            while True:
                t0 = time.perf_counter()
                cut = pipe.take()
                if cut is None:
                    ended = not pipe.stopping.is_set()  # nothing read was dropped
                    break
                if not self._finish(cut, time.perf_counter() - t0) or self._stop.is_set():
                    break
        finally:
            pipe.close()
            self._pipe = None
            buffer.clear()
        resets = buffer.take_resets()
        if ended:  # jumps after the last batch (else the next start finds them again)
            for tp, needed, earliest in resets:
                self._write_offset_reset(tp, needed, earliest)
        return pipe.result

    def _hand_over(self) -> bool:
        """Reader thread: fetch the batch in hand and wait until the main thread takes it.
        False when stopping (the batch is dropped; no checkpoint covers it). When its fetch
        failed, wait until it was applied before reading on: its retry fetches again, and
        the next batch must fetch after that (see `_finish`)."""
        pipe = self._pipe
        assert pipe is not None
        cut = self.buffer.cut()
        if pipe.stopping.is_set():
            return False
        cut.prepared = self.runner.prepare(cut.changes)
        if cut.prepared.error is not None:
            cut.done = threading.Event()
        if not pipe.put(cut):
            return False
        return cut.done is None or pipe.wait_for(cut.done)

    # -- rebalancing feeds (Kafka consumer groups) ----------------------------------------

    def on_assign(self, partitions: Sequence[TopicPartition]) -> Mapping[TopicPartition, int]:
        return self.starting_offsets(partitions)

    def on_revoke(self, partitions: Sequence[TopicPartition]) -> None:
        """Finish and checkpoint the batch in hand before the partitions move away."""
        if self.buffer.count:
            self.flush()

    def _record_offset_reset(self, tp: TopicPartition, needed: int, earliest: int) -> None:
        pipe = self._pipe
        if pipe is not None and pipe.in_reader:
            # Checkpoints are written by the main thread only, in batch order: the jump is
            # recorded just before the batch read after it.
            self.buffer.resets.append((tp, needed, earliest))
            return
        self._write_offset_reset(tp, needed, earliest)

    def _write_offset_reset(self, tp: TopicPartition, needed: int, earliest: int) -> None:
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
            kind="retention",
        )

    # -- one batch, and the error queue (see `BatchRunner`) ----------------------------

    def retry_errors(self, limit: int = 500, now: float | None = None) -> tuple[int, int]:
        """Re-process due error-queue entries. Returns (succeeded, failed again)."""
        return self.runner.retry_errors(limit=limit, now=now)


ConstructedPillow = Pillow
