"""The pillow reading a feed that hands over lists of changes (``iter_change_batches``, as
the Kafka feed does): same batches, dedupe, checkpoints and stopping as change by change."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from changefeed.backends.base import ChangeList
from changefeed.change import Change, ChangeMeta, TopicPartition
from changefeed.checkpoints import CheckpointStore
from changefeed.errors import ErrorQueue
from changefeed.pillow import BatchPolicy, BatchReport, Pillow, PillowListener
from changefeed.testing.clock import FakeClock
from tests.doubles.feeds import TOPIC, ScriptedFeed, stub_change
from tests.doubles.processors import RecordingProcessor

Script = Sequence[list[Change] | None]


def recorder() -> RecordingProcessor:
    """Records each batch as (id, partition, offset)."""
    return RecordingProcessor(
        "record", record=lambda c: (c.id, c.partition, c.offset), needs_documents=False
    )


def stop_after(pillow: Pillow, batch: int) -> Callable[[int], None]:
    """A hook that stops ``pillow`` during batch number ``batch``."""
    return lambda n: pillow.stop() if n == batch else None


def change(partition: int, offset: int, doc_id: str) -> Change:
    return stub_change(offset, doc_id, partition)


def run(
    tmp_path: Path, script: Script, *, batched: bool = True, batch_size: int = 3, stop: int = 0
) -> tuple[RecordingProcessor, dict[TopicPartition, int], int, ScriptedFeed]:
    proc = recorder()
    checkpoints = CheckpointStore(f"sqlite:///{tmp_path}/state-{batched}-{stop}.db")
    feed = ScriptedFeed(script, partitions=2, batched=batched)
    pillow = Pillow(
        "p", feed, proc, checkpoints=checkpoints, batching=BatchPolicy(batch_size, max_wait=60)
    )
    if stop:
        proc.hook = stop_after(pillow, stop)
    total = pillow.run(forever=True)
    return proc, checkpoints.get("p"), total, feed


# Two partitions interleaved in runs, a document changed twice within one list and once
# across lists, and an idle sentinel that flushes a partial batch.
SCRIPT: list[list[Change] | None] = [
    [change(0, 0, "a"), change(0, 1, "b"), change(1, 0, "c"), change(1, 1, "a"), change(0, 2, "d")],
    [change(1, 2, "e"), change(0, 3, "e")],
    None,
    [change(1, 3, "f")],
]


def test_lists_are_split_into_batches_with_the_same_result_as_change_by_change(
    tmp_path: Path,
) -> None:
    batched, batched_cp, batched_total, feed = run(tmp_path, SCRIPT)
    single, single_cp, single_total, _ = run(tmp_path, SCRIPT, batched=False)
    assert feed.lists_taken == len(SCRIPT)
    assert batched.batches == single.batches
    assert batched_cp == single_cp
    assert batched_total == single_total == 8
    # batch 1: a, b, c (full); batch 2: a (later offset), d, e (full); e again; then f.
    assert batched.batches == [
        [("a", 0, 0), ("b", 0, 1), ("c", 1, 0)],
        [("a", 1, 1), ("d", 0, 2), ("e", 1, 2)],
        [("e", 0, 3)],
        [("f", 1, 3)],
    ]
    assert batched_cp == {TopicPartition(TOPIC, 0): 4, TopicPartition(TOPIC, 1): 4}


def test_dedupe_within_a_list_keeps_the_last_change(tmp_path: Path) -> None:
    script: Script = [[change(0, 0, "a"), change(1, 0, "b"), change(0, 1, "a"), change(1, 1, "a")]]
    proc, checkpoint, total, _ = run(tmp_path, script, batch_size=10)
    assert proc.batches == [[("b", 1, 0), ("a", 1, 1)]]
    assert checkpoint == {TopicPartition(TOPIC, 0): 2, TopicPartition(TOPIC, 1): 2}
    assert total == 4


def test_stop_mid_list_checkpoints_only_what_was_processed(tmp_path: Path) -> None:
    script: Script = [[change(0, i, f"d{i}") for i in range(7)], [change(0, 7, "d7")]]
    proc, checkpoint, total, feed = run(tmp_path, script, batch_size=3, stop=1)
    assert proc.batches == [[("d0", 0, 0), ("d1", 0, 1), ("d2", 0, 2)]]
    assert checkpoint == {TopicPartition(TOPIC, 0): 3}  # d3.. are read again on restart
    assert total == 3
    assert feed.lists_taken == 1


def test_invalid_stub_in_a_list_goes_to_the_error_queue(tmp_path: Path) -> None:
    bad = Change.from_raw(TOPIC, 0, 1, b'{"document_id": ""}', key="k")
    script: Script = [[change(0, 0, "a"), bad, change(0, 2, "b")]]
    proc, checkpoint, _, _ = run(tmp_path, script, batch_size=10)
    assert proc.batches == [[("a", 0, 0), ("b", 0, 2)]]
    assert checkpoint == {TopicPartition(TOPIC, 0): 3}
    queue = ErrorQueue(f"sqlite:///{tmp_path}/state-True-0.db")
    (record,) = queue.list("p")
    assert (record.document_id, record.offset) == ("k", 1)


def test_where_the_feed_stands_is_the_checkpoint_once_its_whole_list_is_in(
    tmp_path: Path,
) -> None:
    """A `ChangeList` says where the feed stands after it (e.g. past records that are not
    changes, or in partitions with nothing new); the pillow checkpoints there only when the
    list's last change is in the batch, and works out the offsets itself before that."""
    ends = {TopicPartition(TOPIC, 0): 10, TopicPartition(TOPIC, 1): 5}
    listed = ChangeList([change(0, i, f"d{i}") for i in range(4)], ends)
    checkpoints = CheckpointStore(f"sqlite:///{tmp_path}/state.db")
    seen: list[dict[TopicPartition, int]] = []

    class Watch(PillowListener):
        def on_batch(self, pillow: Pillow, report: BatchReport) -> None:
            seen.append(dict(report.checkpoint))

    pillow = Pillow(
        "p",
        ScriptedFeed([listed], partitions=2),
        recorder(),
        checkpoints=checkpoints,
        batching=BatchPolicy(3),
    )
    pillow.listeners.append(Watch())
    assert pillow.run(forever=True) == 4
    assert seen == [{TopicPartition(TOPIC, 0): 3}, ends]
    assert checkpoints.get("p") == ends


def test_decoded_builds_the_same_change_as_the_constructor() -> None:
    meta = ChangeMeta("a", "memory", "docs", is_deletion=True)
    fast, slow = Change.decoded(TOPIC, 1, 7, meta), Change(TOPIC, 1, 7, meta)
    assert {s: getattr(fast, s) for s in Change.__slots__} == {
        s: getattr(slow, s) for s in Change.__slots__
    }


def run_adaptive(
    tmp_path: Path, lists: Sequence[ChangeList], *, adaptive: bool = True
) -> tuple[RecordingProcessor, list[int]]:
    """Run a pillow (batch size 100, a clock that never moves, so ``max_wait`` never
    elapses) over ``lists``; returns the processor and, for each list after the first, how
    many batches had been processed when the pillow asked for it."""
    proc = recorder()
    asked: list[int] = []

    class Feed(ScriptedFeed):
        def iter_change_batches(
            self, since: Mapping[TopicPartition, int], forever: bool = False
        ) -> Iterator[ChangeList | None]:
            for i, item in enumerate(lists):
                if i:
                    asked.append(len(proc.batches))
                yield item

    checkpoints = CheckpointStore(f"sqlite:///{tmp_path}/state-adaptive-{adaptive}.db")
    pillow = Pillow(
        "p",
        Feed([]),
        proc,
        checkpoints=checkpoints,
        batching=BatchPolicy(100, max_wait=60, adaptive=adaptive),
        clock=FakeClock(),
    )
    pillow.run(forever=True)
    return proc, asked


def test_a_caught_up_list_is_processed_at_once(tmp_path: Path) -> None:
    backlog = ChangeList([change(0, 0, "a"), change(0, 1, "b")])
    caught_up = ChangeList([change(0, 2, "c")], caught_up=True)
    later = ChangeList([change(0, 3, "d")])
    proc, asked = run_adaptive(tmp_path, [backlog, caught_up, later])
    # The backlog list waits for more; the caught-up list flushes before the next read.
    assert asked == [0, 1]
    assert proc.batches == [[("a", 0, 0), ("b", 0, 1), ("c", 0, 2)], [("d", 0, 3)]]


def test_an_empty_caught_up_list_flushes_the_batch_in_hand(tmp_path: Path) -> None:
    # Kafka's end-of-partition events may come after the last messages.
    first = ChangeList([change(0, 0, "a")])
    told = ChangeList((), {}, caught_up=True)
    later = ChangeList([change(0, 1, "b")])
    proc, asked = run_adaptive(tmp_path, [first, told, later])
    assert asked == [0, 1]
    assert proc.batches == [[("a", 0, 0)], [("b", 0, 1)]]


def test_without_adaptive_batching_a_caught_up_list_waits_for_a_full_batch(
    tmp_path: Path,
) -> None:
    caught_up = ChangeList([change(0, 0, "a")], caught_up=True)
    told = ChangeList((), {}, caught_up=True)
    later = ChangeList([change(0, 1, "b")])
    proc, asked = run_adaptive(tmp_path, [caught_up, told, later], adaptive=False)
    assert asked == [0, 0]
    assert proc.batches == [[("a", 0, 0), ("b", 0, 1)]]
