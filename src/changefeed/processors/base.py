"""Processors: the work a pillow does for changes.

A processor works either one change at a time (`Processor.process_change`) or on a whole
batch (`BulkProcessor.process_changes`, which reports per-change failures so one bad
document does not fail its neighbours). Processors must be idempotent: delivery is at least
once, and a replay must not regress data (upsert by id, use external versions).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

from changefeed.change import Change
from changefeed.failures import Failure

ChangeFailure = Failure
"""A change a bulk processor could not handle: ``ChangeFailure(change, exception,
retryable=True, where=None)``. The same class as `changefeed.failures.Failure`, so what a
processor returns is what the error queue stores; ``retryable=False`` parks it at once, and
``where`` names the part of a processor made of parts that failed (see `Failure`)."""


@dataclass(slots=True)
class OutputDrift:
    """How a processor's output for some documents differs from what their stores say, by
    document id (``changefeed verify``). ``clear`` lists ids whose output re-processing alone
    cannot fix (the sink keeps a version it thinks newer): a repair deletes them first."""

    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    different: list[str] = field(default_factory=list)
    clear: list[str] = field(default_factory=list)

    def ids(self) -> list[str]:
        """Every drifted id, once."""
        return list(dict.fromkeys([*self.missing, *self.extra, *self.stale, *self.different]))


class Processor(ABC):
    """Handles one change at a time."""

    needs_documents: bool = True
    """False when the processor only needs stubs (no document fetch for its sake)."""

    dependency_errors: tuple[type[BaseException], ...] = ()
    """Exception classes of this processor that mean its sink is down (the pillow backs
    off), beyond those `changefeed.failures.is_dependency_failure` knows."""

    document_errors: tuple[type[BaseException], ...] = ()
    """Exception classes of this processor that mean the document is bad (queued alone),
    even where they would otherwise look like a dependency's."""

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def batch_size_hint(self) -> int | None:
        """The batch size this processor works best at, for a pillow given none: a
        processor whose cost per batch grows with what the batch spreads over (one statement
        per table touched) wants fuller batches than the default. None (the default): no
        preference. An explicit ``batch_size`` always wins; the largest hint above the
        default is taken."""
        return None

    @abstractmethod
    def process_change(self, change: Change) -> None:
        """Do the work for one change; raise to send it to the error queue."""

    def for_failure(self, where: str) -> Processor | None:
        """The processor that redoes an error-queue entry queued under ``where`` (a
        `ChangeFailure.where` of this processor's), or None when ``where`` is none of its
        parts (the default: a processor of one part is found by its name)."""
        return None

    def bootstrap(self) -> None:  # noqa: B027 - optional hook
        """One-time setup before the pillow runs (create an index or table). Idempotent."""

    def reset(self) -> None:  # noqa: B027 - optional hook
        """Clear this processor's output before a rebuild from the document stores
        (``changefeed reindex --reset``). Processors that keep no output of their own (a
        cache invalidator, a republisher) have nothing to clear: the default does nothing."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def verify_output(self, changes: Sequence[Change]) -> OutputDrift | None:
        """Compare this processor's output for these documents with what processing
        ``changes`` would write: one change per document, built from its store (the document
        set, or a deletion for an id no store holds live). None means "cannot be verified"
        (the default: a cache invalidator or a republisher keeps no output to compare)."""
        return None

    def iter_output_ids(self, chunk_size: int = 1000) -> Iterator[list[str]]:
        """The document ids present in the output, in chunks, so ``verify`` finds output for
        documents the stores no longer hold (extra). Only meaningful with `verify_output`."""
        return iter(())

    def as_rebuildable(self) -> Rebuildable | None:
        """This processor as a `Rebuildable` (its output can be rebuilt next to the live one
        and swapped in), or None: it cannot, the default. ``changefeed rebuild`` and
        ``reindex --new-index`` leave such a processor alone."""
        return None

    def as_backfilling(self) -> Backfilling | None:
        """This processor as a `Backfilling` one (parts added while it runs are filled
        next to it), or None: it has no such parts, the default."""
        return None


class Shadow(ABC):
    """A new output of a `Rebuildable` processor, filled next to the live one by
    ``processor`` while the live one keeps serving, then swapped in (`changefeed.rebuild`)."""

    processor: Processor
    """Writes the new output: a processor like the live one, pointed at it. It shares the
    live processor's connections: close the live one, not this."""
    target: str
    """The table or index filled: named in results, and in the saved progress a resumed
    rebuild finds."""

    @abstractmethod
    def swap_in(self) -> None:
        """Make the filled output the live one in one step: readers see the old output or
        the new one, never none; the live processor writes the new one from now on."""

    @abstractmethod
    def abandon(self) -> None:
        """The fill was interrupted: keep what a resumed rebuild continues
        (`Rebuildable.resumable`), remove the rest. The live output is untouched."""


class Rebuildable(Processor):
    """A processor whose output can be rebuilt from the document stores next to the live
    one, then swapped in without downtime (``changefeed rebuild``, ``reindex --new-index``,
    the rebuild of a changed report definition): a report table, an Elasticsearch index.
    `changefeed.rebuild` drives it through this contract alone."""

    resumable: bool = False
    """An interrupted rebuild can resume into the same shadow (a report table named after
    its definition); when False, a rebuild always starts over into a new one."""

    def as_rebuildable(self) -> Rebuildable:
        return self

    @abstractmethod
    def prepare_rebuild(self) -> None:
        """Get the live output ready for a requested rebuild (its bootstrap), accepting a
        changed definition that the bootstrap of a running pillow would refuse."""

    @abstractmethod
    def shadow_output(self) -> Shadow:
        """A new output next to the live one, empty, or as an interrupted rebuild left it
        when `resumable`."""

    def holding(self) -> AbstractContextManager[None]:
        """Hold off this processor's batches for the block: the last replay into the shadow
        and the swap run under it, so no batch writes the old output after the shadow caught
        up. The default holds nothing, right for a sink whose swap cannot cut a batch's writes
        in two (an alias update): what the live processor writes meanwhile into the old
        output is replayed into the new one after the swap."""
        return nullcontext()

    @property
    def pending_rebuild(self) -> str | None:
        """Why the live output must be rebuilt before it matches this processor's
        definition, as bootstrap found (a report whose columns changed), or None: nothing
        pending, the default. A running pillow rebuilds it next to the live output."""
        return None

    @property
    def writable_until_rebuilt(self) -> bool:
        """While a `pending_rebuild` runs next to the pillow, the live output can still be
        written (with the definition it was built with); when False it is rebuilt before
        the pillow processes anything. Only asked when a rebuild is pending."""
        return True

    def output_outdated(self) -> bool:
        """True when the live output was made for another definition, so writing into it
        cannot bring it in line and ``changefeed reindex`` builds a new one next to it
        instead (an Elasticsearch alias pointing at an index of other mappings). Asks the
        sink; the default, False, for an output whose bootstrap brings it in line."""
        return False


class Backfilling(Processor):
    """A processor made of parts that can be added or changed while its pillow runs, each
    filled from the document stores next to the running pillow (a back-fill: a shadow
    rebuild of the part, a `Rebuildable`) before it goes live: the data sources of
    `ReportTablesProcessor`. ``changefeed.rebuild.Backfiller`` drives it, in a thread next
    to the pillow, through this contract alone."""

    backfill_chunk_size: int = 1000
    """Changes per chunk of a back-fill (its progress is saved after each)."""
    backfill_wanted: threading.Event
    """Set while a part waits for its back-fill, so an idle back-filler wakes up."""

    def as_backfilling(self) -> Backfilling:
        return self

    @abstractmethod
    def poll(self) -> None:
        """Pick up the parts added, changed or removed since the last call (cheap when
        nothing changed: the back-filler calls it between back-fills)."""

    @abstractmethod
    def pending_backfill(self) -> Rebuildable | None:
        """A part waiting for its back-fill, claimed (handed out to no one else until
        `backfill_done`); None when none waits."""

    @abstractmethod
    def backfill_progress(self, part: Rebuildable, done: int) -> None:
        """The back-fill of ``part`` went through ``done`` changes."""

    @abstractmethod
    def backfill_done(self, part: Rebuildable, finished: bool) -> None:
        """The back-fill of ``part`` ended: live when ``finished`` (and the part was not
        changed meanwhile); otherwise it is handed out again."""


class BulkProcessor(Processor):
    """Handles a batch in one go (one bulk request, one multi-row upsert)."""

    @abstractmethod
    def process_changes(self, changes: Sequence[Change]) -> list[ChangeFailure]:
        """Do the work for a batch; return the changes that failed. Raise only when the whole
        batch failed (the pillow then retries change by change)."""

    def prepare_changes(self, changes: Sequence[Change]) -> object:
        """Optional: the part of a batch's work that needs nothing but the changes and their
        documents (turning documents into rows, say), returned for `process_prepared`.

        A pipelined pillow calls it on its reader thread for the next batch while this
        batch's processors write, so the main thread, the one that holds up the pillow, has
        less to do. It must not write anything or read the processor's output, and it sees
        the documents as fetched (before other processors of the pillow ran on them). None,
        the default, means nothing was prepared; so does an exception, and the batch is then
        processed by `process_changes` as usual."""
        return None

    def process_prepared(self, changes: Sequence[Change], prepared: object) -> list[ChangeFailure]:
        """`process_changes` with what `prepare_changes` returned for the same changes (not
        None). The default ignores it."""
        return self.process_changes(changes)

    def process_change(self, change: Change) -> None:
        failures = self.process_changes([change])
        if failures:
            raise failures[0].exception


class FunctionProcessor(Processor):
    """Wraps a plain function ``f(change)`` as a processor."""

    def __init__(
        self,
        func: Callable[[Change], object],
        name: str | None = None,
        needs_documents: bool = True,
    ) -> None:
        self.func = func
        self._name: str = name or str(getattr(func, "__name__", "function"))
        self.needs_documents = needs_documents

    @property
    def name(self) -> str:
        return self._name

    def process_change(self, change: Change) -> None:
        self.func(change)


class NoopProcessor(BulkProcessor):
    """Does nothing; for benchmarks and for pillows that only move checkpoints."""

    needs_documents = False

    def process_changes(self, changes: Sequence[Change]) -> list[ChangeFailure]:
        return []
