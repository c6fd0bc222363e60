"""Reindex: rebuild a pillow's output from its document stores rather than from the log.

The log may no longer hold every change (retention), and replaying it means one fetch per
change; a reindex reads every live document once, in bulk, and feeds the pillow's processors
with synthetic changes. It keeps three promises:

* **Nothing is missed.** Before the first document is read, the live checkpoint moves to the
  head of the log (recorded in the checkpoint history). Everything published before that
  point is covered by the reindex, which reads current documents; everything after it is
  read from the log by the live pillow. At the end, the reindex itself replays the log from
  those heads (the catch-up pass), so a change that raced with a document the reindex read
  is applied again after the reindex wrote that document.
* **Resumable.** Progress (per store, the last document id done) is saved in the state
  database after every chunk; an interrupted reindex resumes after the last finished chunk.
* **Online.** The live pillow may keep running: processors are idempotent, so a document
  written by both is simply written twice.

Rebuilding only some processors (e.g. one report table) leaves the checkpoint alone, since
the pillow's other processors still need the log; the catch-up pass covers the race.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from rich.console import Console
from rich.progress import Progress

from changefeed.batch import latest_per_document
from changefeed.change import Change, ChangeMeta, TopicPartition
from changefeed.clock import SYSTEM_CLOCK, Clock
from changefeed.lifecycle import StopFlag
from changefeed.pillow import Pillow
from changefeed.processors.base import Processor
from changefeed.progress import document_progress
from changefeed.reindex_jobs import ReindexJobs
from changefeed.runner import stop_on_signals
from changefeed.stores.base import DocumentStore


class PillowSource(Protocol):
    """What a reindex needs of the application: its pillows by name."""

    def get_pillow(self, name: str) -> Pillow: ...


log = logging.getLogger("changefeed.reindex")

REINDEX_TOPIC = "reindex"
"""The topic name reindex changes carry (they come from a store, not from the log)."""


class ReindexError(RuntimeError):
    """A reindex that cannot start: no stores to read, nothing to resume, unknown processor."""


@dataclass(slots=True)
class ReindexResult:
    pillow: str
    job: str
    resumed: bool
    documents: int
    """Documents read from the stores in this run (not counting those done before a resume)."""
    caught_up: int
    """Changes replayed from the log by the catch-up pass."""
    failures: int
    seconds: float
    interrupted: bool = False
    """Stopped (Ctrl-C, SIGTERM) after a finished chunk; ``--resume`` continues from there."""


def store_key(store: DocumentStore) -> str:
    return f"{store.data_source_type}/{store.data_source_name}"


def reindex_stores(pillow: Pillow) -> list[DocumentStore]:
    """The stores a pillow is rebuilt from: its ``reindex_stores``, else every registered one."""
    stores = pillow.reindex_stores
    if stores is None:
        stores = list(pillow.document_stores)
    if not stores:
        raise ReindexError(
            f"pillow {pillow.name!r} has no document stores to reindex from: register them on "
            "the app (app.document_stores.register) or pass reindex_stores=[...] to the pillow"
        )
    return stores


class Reindexer:
    """One reindex run of a pillow (or of some of its processors); see the module docstring."""

    def __init__(
        self,
        pillow: Pillow,
        *,
        processors: Sequence[str] | None = None,
        chunk_size: int = 1000,
        console: Console | None = None,
        show_progress: bool = False,
        clock: Clock = SYSTEM_CLOCK,
        pipeline: bool = True,
    ) -> None:
        """``pipeline``: read the next chunk from the store in a thread of its own while the
        processors write the one in hand (stores that allow it, `thread_safe_reads`)."""
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self.pillow = pillow
        self.processors = self._select(pillow, processors)
        self.partial = processors is not None
        self.job = (
            pillow.name
            if not self.partial
            else f"{pillow.name}/{','.join(sorted(processors or ()))}"
        )
        self.stores = reindex_stores(pillow)
        self.chunk_size = chunk_size
        self.console = console or Console(stderr=True)
        self.show_progress = show_progress
        self.clock = clock
        self.pipeline = pipeline
        self.engine = pillow.checkpoints.engine
        # The pillow's own batch path (fetch, processors, failure policy), for the
        # processors being rebuilt.
        self.runner = pillow.runner.with_processors(self.processors)
        self._offset = 0
        self._failures = 0
        self._stop = StopFlag()

    def stop(self) -> None:
        """Stop after the chunk in hand (signal-safe); the progress saved so far lets
        ``--resume`` continue."""
        self._stop.set()

    @staticmethod
    def _select(pillow: Pillow, names: Sequence[str] | None) -> list[Processor]:
        if names is None:
            return list(pillow.processors)
        by_name = {p.name: p for p in pillow.processors}
        unknown = [n for n in names if n not in by_name]
        if unknown or not names:
            known = ", ".join(sorted(by_name))
            raise ReindexError(
                f"pillow {pillow.name!r} has no processor {', '.join(map(repr, unknown))} (known: {known})"
            )
        return [by_name[n] for n in names]

    # -- the run -------------------------------------------------------------------------

    def run(self, *, resume: bool | None = None, reset: bool = False) -> ReindexResult:
        """Reindex; ``resume``: None resumes an interrupted run if there is one, True insists
        on resuming, False starts over. ``reset`` clears the processors' output first (only
        when starting over), e.g. drops and recreates report tables."""
        started = time.monotonic()
        self.jobs = ReindexJobs(self.engine, self.job, self.pillow.name, self.clock)
        heads = self.jobs.unfinished_heads()
        resumed = heads is not None and resume is not False
        if resume is True and heads is None:
            raise ReindexError(f"no interrupted reindex of {self.job!r} to resume")
        for processor in self.processors:
            processor.bootstrap()
        if not resumed:
            heads = self._start(reset)
        assert heads is not None
        documents = 0
        caught_up = 0
        with self._progress_bar() as bar:
            for store in self.stores:
                documents += self._reindex_store(store, bar)
            if not self._stop.is_set():
                caught_up = self._catch_up(heads, bar)
        interrupted = self._stop.is_set()
        if not interrupted:  # an interrupted job stays unfinished, so --resume finds it
            self.jobs.finish()
        return ReindexResult(
            self.pillow.name,
            self.job,
            resumed,
            documents,
            caught_up,
            self._failures,
            time.monotonic() - started,
            interrupted=interrupted,
        )

    def _start(self, reset: bool) -> dict[TopicPartition, int]:
        if reset:
            for processor in self.processors:
                log.info("reindex %s: resetting the output of %s", self.job, processor.name)
                processor.reset()
        heads = self.pillow.change_feed.latest_offsets()
        if not self.partial and heads:
            self.pillow.checkpoints.set(
                self.pillow.name,
                heads,
                reason="reindex: moved to the head; older changes are rebuilt from the document stores",
                kind="to-head",
            )
        self.jobs.start(heads)
        return heads

    # -- reading the stores ------------------------------------------------------------------

    def _reindex_store(self, store: DocumentStore, bar: Progress) -> int:
        key = store_key(store)
        state = self.jobs.load(key)
        if state.done:
            return 0
        if state.last_id is not None and not state.ordered:
            # Resuming by id needs ids in order; this store listed them out of order.
            log.warning(
                "reindex %s: %s lists ids out of order; reading it again from the start",
                self.job,
                key,
            )
            state.last_id = None
            state.position = 0
            state.ordered = True
        task = bar.add_task(
            f"{self.pillow.name} ← {key}",
            total=store.count_documents() if self.show_progress else None,
            completed=state.position,
        )
        documents = 0
        previous = state.last_id
        chunks = self._changes(store, state.last_id)
        reader = _ReadAhead(chunks) if self.pipeline and store.thread_safe_reads else chunks
        try:
            for changes in reader:
                if state.ordered and not _ascending(previous, changes):
                    state.ordered = False
                previous = changes[-1].id
                self._failures += self.runner.process(changes).failures
                documents += len(changes)
                state.last_id = previous
                state.position += len(changes)
                self.jobs.save(key, state)
                bar.update(task, completed=state.position)
                if self._stop.is_set():
                    return documents
        finally:
            if isinstance(reader, _ReadAhead):
                reader.close()
        state.done = True
        self.jobs.save(key, state)
        return documents

    def _changes(self, store: DocumentStore, after: str | None) -> Iterator[list[Change]]:
        """The store's live documents after ``after`` as synthetic changes, one list per
        chunk. Pipelined, this runs in the reader thread: building the changes is taken
        off the path of the processors too."""
        source_type, source_name = store.data_source_type, store.data_source_name
        for chunk in store.iter_document_chunks(after, self.chunk_size):
            offset = self._offset
            changes: list[Change] = []
            append = changes.append
            for doc_id, doc in chunk:
                change = Change(
                    REINDEX_TOPIC, 0, offset, ChangeMeta(doc_id, source_type, source_name)
                )
                change.set_document(doc)
                append(change)
                offset += 1
            self._offset = offset
            if changes:
                yield changes

    # -- the catch-up pass -------------------------------------------------------------

    def _catch_up(self, heads: dict[TopicPartition, int], bar: Progress) -> int:
        """Replay the log from the heads recorded at the start, through the processors
        (partitions that appeared since then from their beginning)."""
        latest = self.pillow.change_feed.latest_offsets()
        since = {tp: heads.get(tp, 0) for tp in latest}
        total = sum(max(0, latest[tp] - off) for tp, off in since.items())
        if total == 0:
            return 0
        task = bar.add_task(f"{self.pillow.name} ← log (changes during the reindex)", total=total)
        batch: list[Change] = []
        read = 0
        for changes in self.pillow.change_feed.iter_change_batches(since, forever=False):
            if changes is None:
                continue
            batch += changes
            read += len(changes)
            if len(batch) >= self.chunk_size:
                self._process_log_batch(batch)
                batch = []
                bar.update(task, completed=min(read, total))
                if self._stop.is_set():
                    return read
        if batch:
            self._process_log_batch(batch)
        bar.update(task, completed=total)
        return read

    def _process_log_batch(self, batch: list[Change]) -> None:
        """Changes read from the log, deduplicated as the pillow does (same key)."""
        self._failures += self.runner.process(latest_per_document(batch)).failures

    def _progress_bar(self) -> Progress:
        return document_progress(self.console, self.show_progress)


T = TypeVar("T")


class _ReadAhead(Generic[T]):
    """An iterator read one item ahead in a thread of its own, so that the store's query for
    chunk N+1 overlaps the processors' writes of chunk N. At most one read is in flight, so
    at most two chunks are in memory. The wrapped iterator only ever runs in the reader
    thread, one call at a time; `close` waits for a read in flight, then closes it."""

    def __init__(self, items: Iterator[T]) -> None:
        self._items = items
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="changefeed-reindex-read")
        self._next: Future[T | None] | None = self._pool.submit(next, items, None)

    def __iter__(self) -> _ReadAhead[T]:
        return self

    def __next__(self) -> T:
        if self._next is None:
            raise StopIteration
        item = self._next.result()  # the reader's exception, if it failed, is raised here
        if item is None:
            self._next = None
            raise StopIteration
        self._next = self._pool.submit(next, self._items, None)
        return item

    def close(self) -> None:
        pending, self._next = self._next, None
        if pending is not None and not pending.cancel():
            pending.exception()  # wait for the read in flight; its result is not wanted
        self._pool.shutdown(wait=True)
        close = getattr(self._items, "close", None)
        if close is not None:
            close()


def _ascending(previous: str | None, changes: list[Change]) -> bool:
    """True when the changes' ids are in ascending order and all after ``previous``."""
    ids = [change.id for change in changes]
    if previous is not None and ids[0] <= previous:
        return False
    return all(a < b for a, b in zip(ids, ids[1:], strict=False))


def reindex(
    app: PillowSource,
    pillow_name: str,
    *,
    resume: bool | None = None,
    reset: bool = False,
    processors: Sequence[str] | None = None,
    chunk_size: int = 1000,
    show_progress: bool = False,
    console: Console | None = None,
    pipeline: bool = True,
) -> ReindexResult:
    """Rebuild a pillow's output (or that of some of its processors, by name) from its
    document stores; see the module docstring for what it guarantees."""
    pillow = app.get_pillow(pillow_name)
    reindexer = Reindexer(
        pillow,
        processors=processors,
        chunk_size=chunk_size,
        console=console,
        show_progress=show_progress,
        pipeline=pipeline,
    )
    try:
        with stop_on_signals(reindexer.stop, f"reindex {pillow_name}"):
            return reindexer.run(resume=resume, reset=reset)
    finally:
        for processor in pillow.processors:
            processor.close()
        pillow.change_feed.close()
