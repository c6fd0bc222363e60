"""The batch in hand on its own: when it is due (size, ``max_wait``, caught up, stopping),
what a cut holds, and what is kept for the next batch. No feed, no database, no sleeping:
time is a `FakeClock`."""

from __future__ import annotations

import pytest

from changefeed.backends.base import ChangeList
from changefeed.batch_buffer import BatchBuffer, BatchPolicy, Cut
from changefeed.change import Change, ChangeMeta, TopicPartition
from changefeed.lifecycle import StopFlag
from changefeed.testing.clock import FakeClock

TP = TopicPartition("events", 0)


def changes(start: int, stop: int, doc: str | None = None) -> list[Change]:
    return [
        Change.decoded("events", 0, i, ChangeMeta(doc or f"d{i}", "memory", "docs"))
        for i in range(start, stop)
    ]


class Flushes:
    """The flush callback: cuts the buffer, remembers the cut, says whether to go on."""

    def __init__(self, buffer: BatchBuffer, go_on: bool = True) -> None:
        self.buffer = buffer
        self.go_on = go_on
        self.cuts: list[Cut] = []

    def __call__(self) -> bool:
        self.cuts.append(self.buffer.cut())
        return self.go_on

    def ids(self) -> list[list[str]]:
        return [[c.id for c in cut.changes] for cut in self.cuts]


def rig(policy: BatchPolicy, go_on: bool = True) -> tuple[BatchBuffer, Flushes, FakeClock]:
    clock = FakeClock()
    buffer = BatchBuffer(policy, clock)
    return buffer, Flushes(buffer, go_on), clock


NOT_STOPPING = StopFlag()


def test_a_list_larger_than_the_batch_is_cut_in_full_batches() -> None:
    buffer, flush, _ = rig(BatchPolicy(batch_size=4, max_wait=60))
    assert buffer.add(ChangeList(changes(0, 10)), flush, NOT_STOPPING) == (10, False)
    assert flush.ids() == [["d0", "d1", "d2", "d3"], ["d4", "d5", "d6", "d7"]]
    assert [cut.offsets for cut in flush.cuts] == [{TP: 4}, {TP: 8}]
    assert (buffer.count, [c.id for c in buffer.changes]) == (2, ["d8", "d9"])
    assert buffer.offsets == {TP: 10}


def test_the_checkpoint_of_a_whole_list_is_where_the_feed_says_it_stands() -> None:
    buffer, flush, _ = rig(BatchPolicy(batch_size=100, max_wait=60))
    told = {TP: 7, TopicPartition("events", 1): 3}
    buffer.add(ChangeList(changes(0, 2), told), flush, NOT_STOPPING)
    assert buffer.offsets == told


@pytest.mark.parametrize("adaptive", [True, False])
def test_a_caught_up_list_is_flushed_at_once_only_when_adaptive(adaptive: bool) -> None:
    buffer, flush, _ = rig(BatchPolicy(batch_size=100, max_wait=60, adaptive=adaptive))
    buffer.add(ChangeList(changes(0, 3), caught_up=True), flush, NOT_STOPPING)
    assert flush.ids() == ([["d0", "d1", "d2"]] if adaptive else [])


def test_an_empty_caught_up_list_flushes_what_is_in_hand() -> None:
    buffer, flush, _ = rig(BatchPolicy(batch_size=100, max_wait=60))
    buffer.add(ChangeList(changes(0, 2)), flush, NOT_STOPPING)
    assert flush.cuts == []
    assert buffer.add(ChangeList([], caught_up=True), flush, NOT_STOPPING) == (0, False)
    assert flush.ids() == [["d0", "d1"]]
    assert buffer.add(ChangeList([], caught_up=True), flush, NOT_STOPPING) == (0, False)
    assert len(flush.cuts) == 1, "nothing in hand: nothing to flush"


def test_max_wait_counts_from_the_first_change_of_the_batch() -> None:
    buffer, flush, clock = rig(BatchPolicy(batch_size=100, max_wait=1.0))
    buffer.add(ChangeList(changes(0, 1)), flush, NOT_STOPPING)
    clock.advance(0.6)
    buffer.add(ChangeList(changes(1, 2)), flush, NOT_STOPPING)
    assert flush.cuts == []
    clock.advance(0.6)
    buffer.add(ChangeList(changes(2, 3)), flush, NOT_STOPPING)
    assert flush.ids() == [["d0", "d1", "d2"]]
    clock.advance(0.6)  # a new batch starts its own wait with its first change
    buffer.add(ChangeList(changes(3, 4)), flush, NOT_STOPPING)
    assert len(flush.cuts) == 1


def test_stopping_flushes_and_stops_reading() -> None:
    buffer, flush, _ = rig(BatchPolicy(batch_size=100, max_wait=60))
    stop = StopFlag()
    stop.set()
    assert buffer.add(ChangeList(changes(0, 2)), flush, stop) == (2, True)
    assert flush.ids() == [["d0", "d1"]]


def test_a_flush_that_could_not_finish_stops_reading_mid_list() -> None:
    buffer, flush, _ = rig(BatchPolicy(batch_size=3, max_wait=60), go_on=False)
    assert buffer.add(ChangeList(changes(0, 10)), flush, NOT_STOPPING) == (3, True)
    assert flush.ids() == [["d0", "d1", "d2"]]
    assert buffer.count == 0, "the rest of the list was not taken: it is read again"


def test_a_cut_keeps_the_last_change_per_document_and_counts_all_read() -> None:
    buffer, flush, _ = rig(BatchPolicy(batch_size=100, max_wait=60))
    buffer.add(ChangeList(changes(0, 3, doc="same") + changes(3, 4)), flush, NOT_STOPPING)
    buffer.resets.append((TP, 0, 2))
    cut = buffer.cut()
    assert [(c.id, c.offset) for c in cut.changes] == [("same", 2), ("d3", 3)]
    assert (cut.seen, cut.offsets, cut.resets) == (4, {TP: 4}, [(TP, 0, 2)])
    assert (buffer.count, buffer.changes, buffer.offsets, buffer.resets) == (0, [], {}, [])


def test_clear_drops_the_changes_and_keeps_the_retention_jumps() -> None:
    buffer, flush, _ = rig(BatchPolicy(batch_size=100, max_wait=60))
    buffer.add(ChangeList(changes(0, 2)), flush, NOT_STOPPING)
    buffer.resets.append((TP, 0, 1))
    buffer.clear()
    assert (buffer.count, buffer.changes, buffer.offsets) == (0, [], {})
    assert buffer.take_resets() == [(TP, 0, 1)]
    assert buffer.take_resets() == []


@pytest.mark.parametrize(
    ("options", "message"),
    [({"batch_size": 0}, "batch_size must be at least 1"), ({"max_wait": -1}, "max_wait")],
)
def test_a_policy_that_makes_no_sense_is_refused(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchPolicy(**options)  # type: ignore[arg-type]
