"""Rebuilds without downtime: fill a new report table or Elasticsearch index next to the live
one from the document stores, then swap it in atomically.

Any processor that declares `Rebuildable` (processors/base.py) is rebuilt so, through that
contract alone: `prepare_rebuild`, a `Shadow` (its processor, `swap_in`, `abandon`),
`holding`, `pending_rebuild`. Report tables and Elasticsearch indexes implement it.

A plain reindex writes over the live output (or, with ``--reset``, empties it first, so
readers see a partial table for the whole run). Here the live table or index keeps serving
and keeps being written by the live pillow while a *shadow* is filled, the way reindex
fills anything (`ShadowReindexer` is a `Reindexer` whose processor writes the shadow):

1. the heads of the log are recorded, the stores are read into the shadow, and the catch-up
   pass replays the log from those heads into it (up to the *mark*, the heads when the
   catch-up started);
2. with the live processor's batches held off (`Rebuildable.holding`; report tables hold)
   the log from the mark to the head is replayed into the shadow too, and the shadow is
   swapped in: one transaction of renames for a table, one ``update_aliases`` for an index;
3. the log from the mark is replayed once more, through the live processor into the new
   output, for what a pillow in another process wrote to the old one before the swap.

Every change is in the shadow or comes after the swap, and the live pillow applies those to
the new output: none is lost. Replays are harmless (processors fetch the current document,
report rows are upserted, Elasticsearch writes carry external versions).

A report table whose definition changed (`ReportTableProcessor.migrate` sets its
`pending_rebuild`) is rebuilt so by `changefeed bootstrap`, and by `changefeed run` in a
thread next to the running pillow (`rebuilding`), which writes the old table with the old
definition until the swap and the new one with the new definition after it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import Progress

from changefeed.batch import BatchReport, BatchRunner, latest_per_document
from changefeed.change import Change, TopicPartition
from changefeed.lifecycle import StopFlag
from changefeed.pillow import Pillow
from changefeed.processors.base import Backfilling, Processor, Rebuildable
from changefeed.processors.reports import (
    ReportSchemaError,
)
from changefeed.reindex import PillowSource, Reindexer, ReindexError
from changefeed.runner import Runnable, stop_on_signals

log = logging.getLogger("changefeed.rebuild")


@dataclass(slots=True)
class RebuildResult:
    pillow: str
    processor: str
    target: str
    """The table or index swapped in."""
    documents: int
    caught_up: int
    """Changes replayed from the log (catch-up pass, under the hold, after the swap)."""
    failures: int
    seconds: float
    resumed: bool = False
    interrupted: bool = False

    def describe(self) -> str:
        if self.interrupted:
            return (
                f"{self.pillow}/{self.processor}: stopped after {self.documents} documents "
                f"into {self.target} (progress saved; the live output is unchanged)"
            )
        how = "resumed, " if self.resumed else ""
        return (
            f"{self.pillow}/{self.processor}: {how}{self.documents} documents into "
            f"{self.target}, {self.caught_up} changes replayed from the log, "
            f"{self.failures} failures (see `changefeed errors`), swapped in, "
            f"{self.seconds:.1f}s"
        )


class ShadowReindexer(Reindexer):
    """A `Reindexer` of one processor of ``pillow`` that writes through ``shadow`` instead
    (a processor of the same name pointed at a shadow table or a new index). Partial, so
    the pillow's checkpoint stays put; its job is named after the shadow, so an interrupted
    rebuild resumes into the same shadow."""

    def __init__(
        self,
        pillow: Pillow,
        live: Processor,
        shadow: Processor,
        target: str,
        on_progress: Callable[[int], None] | None = None,
        **kwargs: Any,
    ) -> None:
        # ``live`` may be a part of one of the pillow's processors (a data source of a
        # `ReportTablesProcessor`), so it is not looked up among them.
        super().__init__(pillow, **kwargs)
        self.partial = True
        self.processors = [shadow]
        runner = pillow.runner.with_processors([shadow])
        self.runner = runner if on_progress is None else _Counted(runner, on_progress)
        self.job = f"{pillow.name}/{live.name}@{target}"
        self.mark: dict[TopicPartition, int] | None = None
        """The heads when the catch-up pass started: the shadow holds every change before."""

    def _catch_up(self, heads: dict[TopicPartition, int], bar: Progress) -> int:
        self.mark = self.pillow.change_feed.latest_offsets()
        return int(super()._catch_up(heads, bar))


class _Counted(BatchRunner):
    """A runner that reports how many changes it went through (a back-fill's progress)."""

    def __init__(self, runner: BatchRunner, on_progress: Callable[[int], None]) -> None:
        super().__init__(
            runner.name,
            runner.processors,
            fetcher=runner.fetcher,
            error_queue=runner.error_queue,
            retry_policy=runner.retry_policy,
        )
        self.on_progress = on_progress
        self.done = 0

    def process(self, changes: Sequence[Change]) -> BatchReport:
        report = super().process(changes)
        self.done += len(changes)
        self.on_progress(self.done)
        return report


def replay(
    pillow: Pillow, runner: BatchRunner, since: dict[TopicPartition, int], chunk_size: int
) -> tuple[int, int]:
    """Replay the pillow's log from ``since`` (new partitions from their start) through
    ``runner`` as the pillow would; returns (changes read, failures)."""
    feed = pillow.change_feed
    latest = feed.latest_offsets()
    start = {tp: since.get(tp, 0) for tp in latest}
    if all(latest[tp] <= start[tp] for tp in latest):
        return 0, 0
    read = failures = 0
    batch: list[Change] = []
    for changes in feed.iter_change_batches(start, forever=False):
        if changes is None:
            continue
        batch += changes
        read += len(changes)
        if len(batch) >= chunk_size:
            failures += runner.process(latest_per_document(batch)).failures
            batch = []
    if batch:
        failures += runner.process(latest_per_document(batch)).failures
    return read, failures


class ShadowRebuild:
    """One rebuild of one processor of ``pillow`` into a shadow, and the swap.

    ``pillow`` reads the stores and the log; ``live`` is the processor whose output is
    replaced, and may belong to another instance of the pillow that runs meanwhile in this
    process (its batches are held off during the swap)."""

    def __init__(
        self,
        pillow: Pillow,
        live: Rebuildable,
        *,
        chunk_size: int = 1000,
        show_progress: bool = False,
        console: Console | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.pillow = pillow
        self.live = live
        self.on_progress = on_progress
        self.chunk_size = chunk_size
        self.show_progress = show_progress
        self.console = console
        self._stop = StopFlag()
        self._reindexer: ShadowReindexer | None = None

    def stop(self) -> None:
        """Stop after the chunk in hand (signal-safe); nothing is swapped."""
        self._stop.set()
        if self._reindexer is not None:
            self._reindexer.stop()

    def run(self, *, resume: bool | None = None) -> RebuildResult:
        started = time.monotonic()
        live = self.live
        if not live.resumable:
            if resume:
                raise ReindexError(
                    f"a rebuild of {live.name} cannot resume (it fills a new output each "
                    "time): start over"
                )
            resume = False
        shadow = live.shadow_output()
        target = shadow.target
        reindexer = ShadowReindexer(
            self.pillow,
            live,
            shadow.processor,
            target,
            self.on_progress,
            chunk_size=self.chunk_size,
            show_progress=self.show_progress,
            console=self.console,
        )
        self._reindexer = reindexer
        if self._stop.is_set():
            reindexer.stop()
        result = reindexer.run(resume=resume, reset=True)
        outcome = RebuildResult(
            self.pillow.name,
            live.name,
            target,
            result.documents,
            result.caught_up,
            result.failures,
            0.0,
            resumed=result.resumed,
        )
        if result.interrupted or reindexer.mark is None:
            shadow.abandon()
            outcome.interrupted = True
            outcome.seconds = time.monotonic() - started
            return outcome
        mark = reindexer.mark
        with live.holding():
            read, failed = replay(self.pillow, reindexer.runner, mark, self.chunk_size)
            shadow.swap_in()
        outcome.caught_up += read
        outcome.failures += failed
        log.info("%s/%s: swapped in %s", self.pillow.name, live.name, target)
        read, failed = replay(
            self.pillow, self.pillow.runner.with_processors([live]), mark, self.chunk_size
        )
        outcome.caught_up += read
        outcome.failures += failed
        outcome.seconds = time.monotonic() - started
        return outcome


def rebuildable(pillow: Pillow) -> list[Rebuildable]:
    """The processors of a pillow that can be rebuilt next to their live output."""
    return [r for p in pillow.processors if (r := p.as_rebuildable()) is not None]


def backfilling(pillow: Pillow) -> list[Backfilling]:
    """The processors of a pillow whose parts are back-filled next to it."""
    return [b for p in pillow.processors if (b := p.as_backfilling()) is not None]


def pending_rebuilds(pillow: Pillow) -> list[Rebuildable]:
    """The processors whose bootstrap found a changed definition to rebuild."""
    return [p for p in rebuildable(pillow) if p.pending_rebuild is not None]


def rebuild(
    app: PillowSource,
    pillow_name: str,
    processors: Sequence[str] | None = None,
    *,
    resume: bool | None = None,
    chunk_size: int = 1000,
    show_progress: bool = False,
    console: Console | None = None,
    on_result: Callable[[RebuildResult], None] | None = None,
) -> list[RebuildResult]:
    """Rebuild a pillow's report tables and Elasticsearch indexes (or those named) next to
    their live output and swap them in, one after another; Ctrl-C stops after a chunk
    without swapping. Processors of other kinds are left alone."""
    pillow = app.get_pillow(pillow_name)
    results: list[RebuildResult] = []
    try:
        chosen = rebuildable(pillow)
        if processors is not None:
            by_name = {p.name: p for p in chosen}
            unknown = [n for n in processors if n not in by_name]
            if unknown:
                known = ", ".join(sorted(by_name)) or "none"
                raise ReindexError(
                    f"pillow {pillow_name!r} has no report table or Elasticsearch processor "
                    f"{', '.join(map(repr, unknown))} (known: {known})"
                )
            chosen = [by_name[n] for n in processors]
        if not chosen:
            raise ReindexError(
                f"pillow {pillow_name!r} has no report table or Elasticsearch index to rebuild"
            )
        for live in chosen:
            live.prepare_rebuild()
            job = ShadowRebuild(
                pillow, live, chunk_size=chunk_size, show_progress=show_progress, console=console
            )
            with stop_on_signals(job.stop, f"rebuild {pillow_name}"):
                result = job.run(resume=resume)
            results.append(result)
            if on_result is not None:
                on_result(result)
            if result.interrupted:
                break
    finally:
        for processor in pillow.processors:
            processor.close()
        pillow.change_feed.close()
    return results


def rebuild_pending(
    pillow: Pillow, *, chunk_size: int = 1000, show_progress: bool = False
) -> list[RebuildResult]:
    """Rebuild, here and now, the report tables of an (idle) bootstrapped pillow whose
    definition changed (`changefeed bootstrap`)."""
    results = []
    for live in pending_rebuilds(pillow):
        job = ShadowRebuild(pillow, live, chunk_size=chunk_size, show_progress=show_progress)
        with stop_on_signals(job.stop, f"rebuild {pillow.name}"):
            results.append(job.run())
        if results[-1].interrupted:
            break
    return results


class _NextToPillow:
    """A thread next to a running pillow that runs shadow rebuilds through a second
    instance of it (a feed is not shared between threads), swapping into the running
    instance's processors."""

    def __init__(self, app: PillowSource, pillow: Pillow, kind: str) -> None:
        self.app = app
        self.pillow = pillow
        self.results: list[RebuildResult] = []
        self._job: ShadowRebuild | None = None
        self._stopped = StopFlag()
        self._thread = threading.Thread(
            target=self._run, name=f"changefeed-{kind}-{pillow.name}", daemon=True
        )

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the chunk in hand and wait for the thread."""
        self._stopped.set()
        if self._job is not None:
            self._job.stop()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _close(self, helper: Pillow) -> None:
        """Close the second instance (not the processors it shares with the running one)."""
        for processor in helper.processors:
            if processor not in self.pillow.processors:
                processor.close()
        helper.change_feed.close()


class BackgroundRebuild(_NextToPillow):
    """The rebuilds of a running pillow's changed report tables, in a thread of their own."""

    def __init__(self, app: PillowSource, pillow: Pillow, chunk_size: int = 1000) -> None:
        super().__init__(app, pillow, "rebuild")
        self.chunk_size = chunk_size
        self.error: BaseException | None = None

    def _run(self) -> None:
        helper = self.app.get_pillow(self.pillow.name)
        try:
            for live in pending_rebuilds(self.pillow):
                if self._stopped.is_set():
                    return
                self._job = ShadowRebuild(helper, live, chunk_size=self.chunk_size)
                if self._stopped.is_set():
                    self._job.stop()
                result = self._job.run()
                self.results.append(result)
                log.warning("%s", result.describe())
        except BaseException as exc:  # noqa: BLE001 - reported; the live table stays usable
            self.error = exc
            log.error(
                "%s: rebuild failed (%s: %s); the live table keeps its old definition and is "
                "rebuilt at the next start",
                self.pillow.name,
                type(exc).__name__,
                exc,
            )
        finally:
            self._close(helper)


BACKFILL_SHARE = 0.5
"""By default a back-fill next to a running pillow works half the time and pauses the other
half (measured: a 100,000-document back-fill next to a pillow fed 1,000 changes/s)."""


class _Pace:
    """Keeps work done in steps to ``share`` of the time: after a step that took t seconds
    it waits t * (1 - share) / share (``wait`` returns early when the work is stopped)."""

    def __init__(self, share: float, wait: Callable[[float], object]) -> None:
        self.share = share
        self.wait = wait
        self.mark = time.monotonic()

    def __call__(self) -> None:
        spent = time.monotonic() - self.mark
        self.wait(spent * (1 - self.share) / self.share)
        self.mark = time.monotonic()


class Backfiller(_NextToPillow):
    """Fills the tables of the data sources that a running pillow's
    `ReportTablesProcessor`s added, changed or enabled, one after another in a thread of
    its own: each is a shadow rebuild (`ShadowRebuild`: the shadow filled from the document
    stores through a second instance of the pillow, the log replayed, the swap), while the
    pillow keeps writing. Between back-fills it polls the processors, so an idle pillow
    still sees ``changefeed reports reload``. A back-fill a kill interrupted resumes from
    its saved progress when the pillow starts again (the data source stays back-filling)."""

    def __init__(
        self, app: PillowSource, pillow: Pillow, idle: float = 1.0, share: float = BACKFILL_SHARE
    ) -> None:
        super().__init__(app, pillow, "backfill")
        self.idle = idle
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        self.share = share
        """The part of the time a back-fill next to the running pillow may take: after each
        chunk it pauses, so the pillow's batches keep the CPU and its latency stays low."""
        self.processors = backfilling(pillow)
        self.errors: list[BaseException] = []
        self._helper: Pillow | None = None

    def _run(self) -> None:
        try:
            while not self._stopped.is_set():
                for processor in self.processors:
                    processor.poll()
                if not self.run_pending(paced=True):
                    waiting = [p.backfill_wanted for p in self.processors]
                    if not any(w.is_set() for w in waiting):
                        self._stopped.sleep(self.idle)
        finally:
            self._close_helper()

    def run_pending(self, *, paced: bool = False) -> int:
        """Back-fill every data source waiting for it, here and now (``paced``: taking
        `share` of the time, next to the running pillow); returns how many were finished."""
        done = 0
        for processor in self.processors:
            while not self._stopped.is_set():
                member = processor.pending_backfill()
                if member is None:
                    break
                done += self._backfill(processor, member, paced)
        return done

    def _backfill(self, processor: Backfilling, member: Rebuildable, paced: bool) -> int:
        name = member.name
        finished = False
        pace = _Pace(self.share, self._stopped.sleep) if paced and self.share < 1 else None

        def progress(n: int) -> None:
            processor.backfill_progress(member, n)
            if pace is not None:
                pace()

        try:
            if self._helper is None:
                self._helper = self.app.get_pillow(self.pillow.name)
            self._job = ShadowRebuild(
                self._helper,
                member,
                chunk_size=processor.backfill_chunk_size,
                on_progress=progress,
            )
            if self._stopped.is_set():
                self._job.stop()
            result = self._job.run()
            finished = not result.interrupted
            self.results.append(result)
            log.warning("%s: back-fill of %s: %s", self.pillow.name, name, result.describe())
        except Exception as exc:  # noqa: BLE001 - reported; tried again after a pause
            self.errors.append(exc)
            log.error("%s: back-fill of %s failed: %s", self.pillow.name, name, exc)
            self._stopped.sleep(self.idle * 5)
        finally:
            processor.backfill_done(member, finished)
        return int(finished)

    def _close_helper(self) -> None:
        helper, self._helper = self._helper, None
        if helper is not None:
            self._close(helper)

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the chunk in hand (the back-fill resumes at the next start)."""
        super().stop(timeout)
        if not self._thread.is_alive():
            self._close_helper()


@contextmanager
def _backfilling(
    app: PillowSource, pillow: Pillow, *, forever: bool, split: bool
) -> Iterator[Backfiller | None]:
    """Around a bootstrapped pillow's run: its `ReportTablesProcessor`s' back-fills, in the
    background when it runs forever, first otherwise. A pillow split over processes does
    none (they would race): run it once in one process to back-fill."""
    if split or not backfilling(pillow):
        yield None
        return
    backfiller = Backfiller(app, pillow)
    if not forever:
        try:
            backfiller.run_pending()
        finally:
            backfiller.stop()
        yield None
        return
    backfiller.start()
    try:
        yield backfiller
    finally:
        backfiller.stop()


@contextmanager
def rebuilding(
    app: PillowSource,
    runnable: Runnable,
    *,
    forever: bool = True,
    num_processes: int = 1,
    bootstrap: bool = True,
) -> Iterator[BackgroundRebuild | None]:
    """Around a pillow's run (``changefeed run``): bootstrap it and rebuild the report tables
    whose definition changed. Running forever, in the background while the pillow keeps
    writing the old tables (`BackgroundRebuild`, stopped when the block ends); with
    ``forever=False``, or when an old table cannot be written (no stored definition),
    first. A pillow split over processes cannot do it safely (the others would keep writing
    the old definition into the new table): `ReportSchemaError` says what to do."""
    if not bootstrap or not isinstance(runnable, Pillow):
        yield None
        return
    pillow = runnable
    pillow.bootstrap()
    split = num_processes > 1 or pillow.change_feed.uses_consumer_group
    with (
        _backfilling(app, pillow, forever=forever, split=split),
        _rebuilding(app, pillow, forever=forever, split=split) as background,
    ):
        yield background


@contextmanager
def _rebuilding(
    app: PillowSource, pillow: Pillow, *, forever: bool, split: bool
) -> Iterator[BackgroundRebuild | None]:
    """The rebuilds of `rebuilding` (its docstring)."""
    pending = pending_rebuilds(pillow)
    if not pending:
        yield None
        return
    if split:
        names = ", ".join(p.name for p in pending)
        raise ReportSchemaError(
            f"{names}: definition changed ({pending[0].pending_rebuild}); a pillow "
            f"split over processes cannot rebuild while it runs: stop it, run `changefeed "
            f"bootstrap {pillow.name}` (rebuilds and swaps), then start it"
        )
    if not forever or not all(p.writable_until_rebuilt for p in pending):
        rebuild_pending(pillow)
        yield None
        return
    background = BackgroundRebuild(app, pillow)
    background.start()
    try:
        yield background
    finally:
        background.stop()
