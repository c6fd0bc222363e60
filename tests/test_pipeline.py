"""The pipelined pillow: batch N+1 is read and fetched while batch N is processed, and every
guarantee of the sequential pillow still holds.

A scripted feed hands over one list per batch; the store and the processor meet at events
(never at sleeps), so each test forces the overlap it is about: the processor of batch N
waits until the reader fetched batch N+1, then checks what must (not) have happened yet.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from changefeed.change import Change, TopicPartition
from changefeed.checkpoints import RETENTION, CheckpointStore
from changefeed.pillow import (
    PIPELINE_ENV,
    BatchPolicy,
    BatchReport,
    DependencyDownError,
    Pillow,
    PillowListener,
)
from changefeed.processors import ChangeFailure
from changefeed.stores import MemoryDocumentStore
from changefeed.stores.base import Fetched
from tests.doubles.feeds import TOPIC, OffsetReset, ScriptedFeed, ScriptItem, stub_change
from tests.doubles.processors import RecordingProcessor
from tests.doubles.rig import PillowRig

TP = TopicPartition(TOPIC, 0)
WAIT = 30.0
"""A guard against a deadlock, never a measure of speed: events are set within
milliseconds."""

# Three batches of two; document "a" is changed in every one of them.
BATCHES = [["a", "b"], ["a", "c"], ["d", "a"]]


def script(batches: Sequence[Sequence[str]] = BATCHES) -> list[ScriptItem]:
    """One list per batch, offsets counting on from 0."""
    out: list[ScriptItem] = []
    offset = 0
    for ids in batches:
        out.append([stub_change(offset + i, doc_id) for i, doc_id in enumerate(ids)])
        offset += len(ids)
    return out


class Store(MemoryDocumentStore):
    """Counts bulk fetches (``fetched[k]`` is set by the k-th, from 1); the k-th waits for
    ``gates[k]`` if there is one, and fails if k is in ``down``."""

    def __init__(self) -> None:
        super().__init__("docs")
        self.fetches: list[tuple[list[str], bool]] = []
        self.fetched = [threading.Event() for _ in range(20)]
        self.gates: dict[int, threading.Event] = {}
        self.down: set[int] = set()
        for doc_id in "abcd":
            self.save(doc_id, {"n": 0})

    def get_documents(self, doc_ids: Iterable[str]) -> dict[str, Fetched]:
        ids = list(doc_ids)
        k = len(self.fetches) + 1
        gate = self.gates.get(k)
        assert gate is None or gate.wait(WAIT)
        self.fetches.append((ids, k not in self.down))
        try:
            if k in self.down:
                raise ConnectionError("store is down")
            return super().get_documents(ids)
        finally:
            self.fetched[k].set()


class Apply(RecordingProcessor):
    """Records the ids of each batch and what happened, in order; runs ``hook(batch
    number)`` first."""

    def __init__(self, checkpoints: CheckpointStore) -> None:
        super().__init__("apply")
        self.checkpoints = checkpoints
        self.events: list[tuple[str, int]] = []
        self.checkpoint_seen: list[dict[TopicPartition, int]] = []
        self.threads: set[str] = set()

    def process_changes(self, changes: Sequence[Change]) -> list[ChangeFailure]:
        n = len(self.batches) + 1
        self.events.append(("start", n))
        self.checkpoint_seen.append(self.checkpoints.get("p"))
        self.threads.add(threading.current_thread().name)
        assert all(c.document is not None for c in changes)
        failures = super().process_changes(changes)
        self.events.append(("end", n))
        return failures


class Rig(PillowRig[Store]):
    """A pipelined pillow ``p`` (batches of two) on a scripted feed of ``items``, the
    gated `Store` and an `Apply` processor; ``subject`` is the pillow under test."""

    def __init__(self, tmp_path: Path, items: Sequence[ScriptItem] | None = None) -> None:
        super().__init__(tmp_path, "p", store=Store(), batching=BatchPolicy(2, max_wait=60))
        self.items = items if items is not None else script()
        self.processor: Apply = Apply(self.checkpoints)
        self.subject = self.make()

    def make(self, **options: Any) -> Pillow:
        options.setdefault("pipeline", True)
        return self.pillow(self.processor, feed=ScriptedFeed(self.items), **options)

    def wait_fetch(self, k: int) -> None:
        assert self.store.fetched[k].wait(WAIT), f"fetch {k} never happened"


def readers() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.endswith("-reader")]


def test_next_batch_is_fetched_during_this_one_and_processed_after_it(tmp_path: Path) -> None:
    rig = Rig(tmp_path)

    def hook(n: int) -> None:
        # Batch n+1 is fetched while batch n is processed (the overlap is real) ...
        if n < len(BATCHES):
            rig.wait_fetch(n + 1)
        # ... but its checkpoint is not written before batch n finished.
        assert rig.checkpoints.get("p") == ({TP: 2 * (n - 1)} if n > 1 else {})

    rig.processor.hook = hook
    total = rig.subject.run(forever=False)

    # Returned once everything read was applied and checkpointed.
    assert total == 6
    assert rig.processor.batches == BATCHES
    assert rig.checkpoints.get("p") == {TP: 6}
    # Each batch started after the one before finished: "a", changed in every batch, is
    # processed in log order, one batch at a time.
    assert rig.processor.events == [(e, n) for n in (1, 2, 3) for e in ("start", "end")]
    assert rig.processor.checkpoint_seen == [{}, {TP: 2}, {TP: 4}]
    assert [ids for ids, _ in rig.store.fetches] == BATCHES
    assert rig.processor.threads == {threading.current_thread().name}
    assert readers() == []


def test_listeners_run_on_the_main_thread_after_each_checkpoint(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    seen: list[tuple[str, dict[TopicPartition, int], dict[TopicPartition, int]]] = []

    class Listen(PillowListener):
        def on_batch(self, pillow: Pillow, report: BatchReport) -> None:
            stored = rig.checkpoints.get("p")
            seen.append((threading.current_thread().name, report.checkpoint, stored))

    rig.subject.listeners.append(Listen())
    rig.subject.run(forever=False)
    main = threading.current_thread().name
    assert seen == [(main, {TP: 2}, {TP: 2}), (main, {TP: 4}, {TP: 4}), (main, {TP: 6}, {TP: 6})]


def test_a_store_down_while_fetching_the_next_batch_fails_that_batch_in_its_turn(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    downs: list[tuple[str, dict[TopicPartition, int], int]] = []
    # The store is down for the fetch of batch 2, which happens while batch 1 is applied.
    rig.store.down = {2}
    applying = rig.store.gates[2] = threading.Event()

    def hook(n: int) -> None:
        if n == 1:
            applying.set()
            rig.wait_fetch(2)

    class Listen(PillowListener):
        def on_dependency_down(
            self, pillow: Pillow, error: DependencyDownError, delay: float
        ) -> None:
            downs.append((error.where, rig.checkpoints.get("p"), len(rig.processor.batches)))

    rig.processor.hook = hook
    rig.subject.listeners.append(Listen())
    assert rig.subject.run(forever=False) == 6

    # Batch 1 was not affected: applied and checkpointed before batch 2 failed.
    assert downs == [("(fetch) memory/docs", {TP: 2}, 1)]
    assert len(rig.clock.sleeps) == 1
    assert rig.processor.batches == BATCHES
    assert rig.checkpoints.get("p") == {TP: 6}
    # Batch 2 was fetched again on retry, and batch 3 only after that: fetches stay in log
    # order, so no output steps back to a version older than one already written.
    assert rig.store.fetches == [
        (["a", "b"], True),
        (["a", "c"], False),
        (["a", "c"], True),
        (["d", "a"], True),
    ]


def test_stop_finishes_the_batch_in_hand_and_drops_the_one_read_ahead(tmp_path: Path) -> None:
    rig = Rig(tmp_path)

    def hook(n: int) -> None:
        if n == 1:
            rig.wait_fetch(2)  # batch 2 is read and fetched ...
            rig.subject.stop()  # ... when the pillow is asked to stop

    rig.processor.hook = hook
    rig.subject.run(forever=True)
    assert rig.processor.batches == [BATCHES[0]]
    assert rig.checkpoints.get("p") == {TP: 2}, "batch 1 finished and checkpointed"
    assert len(rig.store.fetches) == 2
    assert readers() == []

    # Batch 2 was never checkpointed: the next start reads it again; nothing is lost.
    rig.processor.hook = lambda n: None
    rig.make().run(forever=False)
    assert rig.processor.batches == BATCHES
    assert rig.checkpoints.get("p") == {TP: 6}


def test_an_error_in_the_reader_is_raised_by_run(tmp_path: Path) -> None:
    rig = Rig(tmp_path, [*script(), RuntimeError("the feed broke")])
    with pytest.raises(RuntimeError, match="the feed broke"):
        rig.subject.run(forever=True)
    # Everything handed over before the error was applied and checkpointed.
    assert rig.processor.batches == BATCHES
    assert rig.checkpoints.get("p") == {TP: 6}
    assert readers() == [], "no reader thread is left behind"


def test_retention_jumps_are_recorded_by_the_main_thread_in_batch_order(tmp_path: Path) -> None:
    items = script()
    rig = Rig(tmp_path, [items[0], OffsetReset(needed=2, earliest=4), items[2]])
    writes: list[tuple[str, str, dict[TopicPartition, int]]] = []
    commit, set_ = rig.checkpoints.commit, rig.checkpoints.set

    def recorded_commit(pillow: str, offsets: Mapping[TopicPartition, int]) -> Any:
        writes.append(("commit", threading.current_thread().name, dict(offsets)))
        return commit(pillow, offsets)

    def recorded_set(pillow: str, offsets: Mapping[TopicPartition, int], **kw: Any) -> Any:
        writes.append((kw["kind"], threading.current_thread().name, dict(offsets)))
        return set_(pillow, offsets, **kw)

    rig.checkpoints.commit = recorded_commit  # type: ignore[method-assign]
    rig.checkpoints.set = recorded_set  # type: ignore[method-assign]
    rig.subject.run(forever=False)
    main = threading.current_thread().name
    assert writes == [
        ("commit", main, {TP: 2}),
        (RETENTION, main, {TP: 4}),
        ("commit", main, {TP: 6}),
    ]
    assert rig.processor.batches == [BATCHES[0], BATCHES[2]]


def test_pipelining_is_chosen_when_it_helps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PIPELINE_ENV, raising=False)
    rig = Rig(tmp_path)

    def pillow(needs_documents: bool, grouped: bool = False, **kw: Any) -> Pillow:
        proc = Apply(rig.checkpoints)
        proc.needs_documents = needs_documents
        return Pillow(
            "q", ScriptedFeed([], grouped=grouped), proc, checkpoints=rig.checkpoints, **kw
        )

    # Automatic: on when documents are fetched (fetching overlaps processing), off for
    # stub-only processors.
    assert pillow(True).pipelined
    assert not pillow(False).pipelined
    assert pillow(False, pipeline=True).pipelined
    assert not pillow(True, pipeline=False).pipelined
    # A consumer group moves partitions away mid-run: never pipelined.
    assert not pillow(True, grouped=True, pipeline=True).pipelined
    # The environment overrides the automatic choice only.
    monkeypatch.setenv(PIPELINE_ENV, "off")
    assert not pillow(True).pipelined
    assert pillow(True, pipeline=True).pipelined
    monkeypatch.setenv(PIPELINE_ENV, "1")
    assert pillow(False).pipelined


def test_sequential_and_pipelined_runs_give_the_same_batches(tmp_path: Path) -> None:
    results = []
    for pipelined in (False, True):
        (tmp_path / str(pipelined)).mkdir()
        rig = Rig(tmp_path / str(pipelined))
        pillow = rig.make(pipeline=pipelined)
        assert pillow.pipelined is pipelined
        total = pillow.run(forever=False)
        results.append((total, rig.processor.batches, rig.checkpoints.get("p")))
    assert results[0] == results[1] == (6, BATCHES, {TP: 6})


class Prepared(Apply):
    """Prepares each batch (its ids, on whichever thread prepares) and records what the
    processing got; ``fail_prepare`` makes preparing raise."""

    def __init__(self, checkpoints: CheckpointStore) -> None:
        super().__init__(checkpoints)
        self.prepared_on: list[str] = []
        self.got: list[object] = []
        self.fail_prepare = False

    def prepare_changes(self, changes: Sequence[Change]) -> object:
        self.prepared_on.append(threading.current_thread().name)
        if self.fail_prepare:
            raise ValueError("cannot prepare")
        return [c.id for c in changes]

    def process_prepared(self, changes: Sequence[Change], prepared: object) -> list[ChangeFailure]:
        self.got.append(prepared)
        return self.process_changes(changes)

    def process_changes(self, changes: Sequence[Change]) -> list[ChangeFailure]:
        if len(self.got) <= len(self.batches):
            self.got.append(None)  # called without anything prepared
        return super().process_changes(changes)


@pytest.mark.parametrize("pipelined", [True, False])
def test_a_processor_prepares_each_batch_ahead_on_the_reader_thread(
    tmp_path: Path, pipelined: bool
) -> None:
    rig = Rig(tmp_path)
    rig.processor = Prepared(rig.checkpoints)
    rig.subject = rig.make(pipeline=pipelined)

    assert rig.subject.run(forever=False) == 6

    assert rig.processor.batches == BATCHES
    assert rig.processor.got == BATCHES  # what was prepared for each batch, with it
    main = threading.current_thread().name
    if pipelined:  # prepared next to the fetch, off the thread that writes
        assert len(rig.processor.prepared_on) == 3 and main not in rig.processor.prepared_on
    else:
        assert rig.processor.prepared_on == [main] * 3


def test_a_batch_that_could_not_be_prepared_is_processed_as_usual(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.processor = Prepared(rig.checkpoints)
    rig.processor.fail_prepare = True
    rig.subject = rig.make()

    assert rig.subject.run(forever=False) == 6

    assert rig.processor.batches == BATCHES
    assert rig.processor.got == [None, None, None]
    assert rig.subject.error_queue.list("p") == []


def test_nothing_is_prepared_for_a_batch_whose_fetch_failed(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.processor = Prepared(rig.checkpoints)
    rig.store.down = {2}  # the second fetch fails: that batch backs off and is fetched again
    rig.subject = rig.make()

    assert rig.subject.run(forever=False) == 6

    assert rig.processor.batches == BATCHES
    assert rig.processor.got == BATCHES
    assert len(rig.processor.prepared_on) == 3  # not for the failed fetch
    assert rig.clock.sleeps  # backed off
