"""Verify a pillow's output against its document stores, and repair what drifted.

Derived data drifts behind a pillow's back: a row deleted by hand, an index document edited,
a deletion missed while the pillow was stopped past retention. `Verifier` reads every live
document of the pillow's stores (or a random sample) in chunks, builds the change that would
rebuild each one, and asks every processor how its output differs (`Processor.verify_output`;
processors that keep no output say they cannot be verified). Output for documents no store
holds live is found by scanning each processor's output ids in chunks too, so memory stays
bounded whatever the number of documents.

A repair re-processes exactly the drifted documents through the pillow's own batch path
(`BatchRunner`: fetch, failure policy, error queue), one processor at a time so that a
processor without drift (a republisher) is never fed; it never moves a checkpoint. Output a
re-write cannot fix (a sink keeping a version it believes newer) is deleted first. Each
repaired chunk is verified again: "repaired" counts documents found clean afterwards.
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from rich.console import Console
from rich.progress import Progress

from changefeed.change import Change, ChangeMeta
from changefeed.pillow import Pillow
from changefeed.processors.base import OutputDrift, Processor
from changefeed.progress import document_progress
from changefeed.reindex import reindex_stores, store_key
from changefeed.stores.base import DocumentDeleted, DocumentStore

VERIFY_TOPIC = "verify"
"""The topic name verification and repair changes carry (built from a store, not the log)."""

KINDS = ("missing", "extra", "stale", "different")
EXAMPLES = 10
"""Drifted ids kept per kind and processor, to show; the counts are exact."""


@dataclass(slots=True)
class ProcessorReport:
    """What verify found for one processor."""

    processor: str
    verifiable: bool = True
    checked: int = 0
    missing: int = 0
    extra: int = 0
    stale: int = 0
    different: int = 0
    repaired: int = 0
    examples: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})

    @property
    def drift(self) -> int:
        """Drifted documents (a document counts under one kind only)."""
        return self.missing + self.extra + self.stale + self.different

    @property
    def unrepaired(self) -> int:
        return self.drift - self.repaired

    def add(self, drift: OutputDrift) -> None:
        for kind in KINDS:
            ids: list[str] = getattr(drift, kind)
            setattr(self, kind, getattr(self, kind) + len(ids))
            room = EXAMPLES - len(self.examples[kind])
            if room > 0:
                self.examples[kind].extend(ids[:room])

    def to_dict(self) -> dict[str, Any]:
        return {
            "processor": self.processor,
            "verifiable": self.verifiable,
            "checked": self.checked,
            **{kind: getattr(self, kind) for kind in KINDS},
            "repaired": self.repaired,
            "unrepaired": self.unrepaired,
            "examples": {k: v for k, v in self.examples.items() if v},
        }


@dataclass(slots=True)
class VerifyResult:
    pillow: str
    processors: list[ProcessorReport]
    documents: int
    """Live store documents checked (ids found only in an output are counted per processor)."""
    sample: int | None
    repair: bool
    seconds: float

    @property
    def drift(self) -> int:
        return sum(p.drift for p in self.processors)

    @property
    def unrepaired(self) -> int:
        return sum(p.unrepaired for p in self.processors)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pillow": self.pillow,
            "documents": self.documents,
            "sample": self.sample,
            "repair": self.repair,
            "drift": self.drift,
            "unrepaired": self.unrepaired,
            "seconds": round(self.seconds, 3),
            "processors": [p.to_dict() for p in self.processors],
        }


def chunked(items: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def reservoir(items: Iterable[Any], size: int, rng: random.Random) -> list[Any]:
    """A uniform random sample of ``size`` items in one pass, holding only the sample."""
    sample: list[Any] = []
    for i, item in enumerate(items):
        if i < size:
            sample.append(item)
        else:
            j = rng.randint(0, i)
            if j < size:
                sample[j] = item
    return sample


class _SortedIds:
    """Membership in the stores' live ids for ascending queries, by a merge walk over the
    stores' id listings (ids only, paged by the stores): no set of every id is held. When
    a listing or the queries turn out not to be in order, it answers False from then on
    (the caller then looks the ids up)."""

    def __init__(self, stores: Sequence[DocumentStore]) -> None:
        self._ids = heapq.merge(*(store.iter_document_ids() for store in stores))
        self._head: str | None = None
        self._last_query: str | None = None
        self._ordered = True
        self._advance()

    def _advance(self) -> None:
        previous = self._head
        self._head = next(self._ids, None)
        if previous is not None and self._head is not None and self._head < previous:
            self._ordered = False

    def contains(self, doc_id: str) -> bool:
        if not self._ordered:
            return False
        if self._last_query is not None and doc_id < self._last_query:
            self._ordered = False
            return False
        self._last_query = doc_id
        while self._head is not None and self._head < doc_id:
            self._advance()
        return self._ordered and self._head == doc_id


class Verifier:
    """One verification (and optional repair) of a pillow; see the module docstring."""

    def __init__(
        self,
        pillow: Pillow,
        *,
        stores: Sequence[DocumentStore] | None = None,
        sample: int | None = None,
        repair: bool = False,
        chunk_size: int = 1000,
        console: Console | None = None,
        show_progress: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        if sample is not None and sample < 1:
            raise ValueError("sample must be at least 1")
        self.pillow = pillow
        self.stores = list(stores) if stores is not None else reindex_stores(pillow)
        self.sample = sample
        self.repair = repair
        self.chunk_size = chunk_size
        self.console = console or Console(stderr=True)
        self.show_progress = show_progress
        self.rng = rng or random.Random()
        self.reports = {p.name: ProcessorReport(p.name) for p in pillow.processors}
        self._offset = 0

    # -- building changes from the stores ----------------------------------------------

    def _change(self, store: DocumentStore, doc_id: str, doc: object) -> Change:
        """The change that rebuilds ``doc_id`` from what ``store`` holds now."""
        self._offset += 1
        if isinstance(doc, dict):
            meta = ChangeMeta(
                doc_id,
                store.data_source_type,
                store.data_source_name,
                version=store.document_version(doc),
            )
            change = Change(VERIFY_TOPIC, 0, self._offset, meta)
            change.set_document(doc)
            return change
        meta = ChangeMeta(doc_id, store.data_source_type, store.data_source_name, is_deletion=True)
        change = Change(VERIFY_TOPIC, 0, self._offset, meta)
        change.set_document(None)
        return change

    def _changes(self, store: DocumentStore, ids: list[str]) -> list[Change]:
        found = store.get_documents(ids)
        return [self._change(store, doc_id, found.get(doc_id)) for doc_id in ids]

    def _store_of(self, change: Change) -> DocumentStore:
        meta = change.metadata
        assert meta is not None
        for store in self.stores:
            if (store.data_source_type, store.data_source_name) == (
                meta.data_source_type,
                meta.data_source_name,
            ):
                return store
        return self.stores[0]

    def _not_live(self, ids: list[str]) -> list[Change]:
        """Deletion changes for the ids no store holds live (each tagged with a store that
        knows it deleted, else the first store)."""
        live: set[str] = set()
        deleted_in: dict[str, DocumentStore] = {}
        for store in self.stores:
            for doc_id, doc in store.get_documents(ids).items():
                if isinstance(doc, dict):
                    live.add(doc_id)
                elif doc is DocumentDeleted:
                    deleted_in.setdefault(doc_id, store)
        return [
            self._change(deleted_in.get(doc_id, self.stores[0]), doc_id, None)
            for doc_id in ids
            if doc_id not in live
        ]

    # -- the run -----------------------------------------------------------------------

    def run(self) -> VerifyResult:
        started = time.monotonic()
        verifiable = [p for p in self.pillow.processors if self._probe(p)]
        documents = 0
        with self._progress_bar() as bar:
            for store, ids, total in self._store_ids():
                task = bar.add_task(f"{self.pillow.name} ← {store_key(store)}", total=total)
                for chunk in chunked(ids, self.chunk_size):
                    changes = self._changes(store, chunk)
                    documents += len(changes)
                    for processor in verifiable:
                        self._check(processor, changes)
                    bar.advance(task, len(chunk))
            for processor in verifiable:
                self._scan_output(processor, bar)
        return VerifyResult(
            self.pillow.name,
            list(self.reports.values()),
            documents,
            self.sample,
            self.repair,
            time.monotonic() - started,
        )

    def _probe(self, processor: Processor) -> bool:
        if processor.verify_output([]) is None:
            self.reports[processor.name].verifiable = False
            return False
        return True

    def _store_ids(self) -> Iterator[tuple[DocumentStore, Iterable[str], int | None]]:
        """Per store, the ids to check: all live ids (streamed), or this store's part of a
        uniform sample over all stores (sorted, so reads stay in key order)."""
        if self.sample is None:
            for store in self.stores:
                total = store.count_documents() if self.show_progress else None
                yield store, store.iter_document_ids(), total
            return
        pairs = (
            (i, doc_id)
            for i, store in enumerate(self.stores)
            for doc_id in store.iter_document_ids()
        )
        picked = reservoir(pairs, self.sample, self.rng)
        for i, store in enumerate(self.stores):
            ids = sorted(doc_id for j, doc_id in picked if j == i)
            if ids:
                yield store, ids, len(ids)

    def _output_ids(self, processor: Processor) -> Iterator[list[str]]:
        if self.sample is None:
            yield from processor.iter_output_ids(self.chunk_size)
            return
        ids = (doc_id for chunk in processor.iter_output_ids(self.chunk_size) for doc_id in chunk)
        yield from chunked(sorted(reservoir(ids, self.sample, self.rng)), self.chunk_size)

    def _scan_output(self, processor: Processor, bar: Progress) -> None:
        """Output for documents no store holds live: each is extra."""
        task = bar.add_task(f"{processor.name}: output ids", total=None)
        live = _SortedIds(self.stores) if self.sample is None else None
        for ids in self._output_ids(processor):
            # Ids the stores list are live: skip them without fetching their documents
            # (when both sides list ids in order; otherwise every id is looked up).
            candidates = ids if live is None else [i for i in ids if not live.contains(i)]
            changes = self._not_live(candidates) if candidates else []
            if changes:
                self._check(processor, changes)
            bar.advance(task, len(ids))

    def _check(self, processor: Processor, changes: list[Change]) -> None:
        report = self.reports[processor.name]
        drift = processor.verify_output(changes)
        assert drift is not None
        report.checked += len(changes)
        report.add(drift)
        if self.repair and drift.ids():
            report.repaired += self._repair(processor, changes, drift)

    # -- repair ------------------------------------------------------------------------

    def _repair(self, processor: Processor, changes: list[Change], drift: OutputDrift) -> int:
        """Re-process the drifted documents through this processor (deleting first what a
        re-write cannot fix), then verify them again; returns how many are clean now."""
        runner = self.pillow.runner.with_processors([processor])
        by_id = {change.id: change for change in changes}
        ids = drift.ids()
        clear = set(drift.clear) | set(drift.extra)
        deletions = [
            self._change(self._store_of(by_id[doc_id]), doc_id, None)
            for doc_id in ids
            if doc_id in clear
        ]
        if deletions:
            runner.process(deletions)
        stubs: list[Change] = []
        for doc_id in ids:
            change = by_id[doc_id]
            if change.deleted:
                continue
            assert change.metadata is not None
            self._offset += 1
            # a stub, not the document: the pillow's fetcher reads the current version
            stubs.append(Change(VERIFY_TOPIC, 0, self._offset, change.metadata))
        if stubs:
            runner.process(stubs)
        again: list[Change] = []
        by_store: dict[int, tuple[DocumentStore, list[str]]] = {}
        for doc_id in ids:
            store = self._store_of(by_id[doc_id])
            by_store.setdefault(id(store), (store, []))[1].append(doc_id)
        for store, store_ids in by_store.values():
            again += self._changes(store, store_ids)
        after = processor.verify_output(again)
        left = set(after.ids()) if after is not None else set(ids)
        return sum(1 for doc_id in ids if doc_id not in left)

    def _progress_bar(self) -> Progress:
        return document_progress(self.console, self.show_progress, remaining=False, transient=True)


def verify_pillow(
    pillow: Pillow,
    *,
    stores: Sequence[DocumentStore] | None = None,
    sample: int | None = None,
    repair: bool = False,
    chunk_size: int = 1000,
    show_progress: bool = False,
    console: Console | None = None,
) -> VerifyResult:
    """Verify (and with ``repair`` fix) a pillow's output against its document stores."""
    return Verifier(
        pillow,
        stores=stores,
        sample=sample,
        repair=repair,
        chunk_size=chunk_size,
        show_progress=show_progress,
        console=console,
    ).run()


__all__ = [
    "KINDS",
    "ProcessorReport",
    "Verifier",
    "VerifyResult",
    "verify_pillow",
]
