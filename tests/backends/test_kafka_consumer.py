"""`PartitionConsumer`: the state a Kafka feed reads through, without a broker (what it says
about the partitions it holds; the reading itself is tested against a broker in
test_kafka.py)."""

from __future__ import annotations

from changefeed.backends.kafka.config import parse_kafka_url
from changefeed.backends.kafka.consumer import PartitionConsumer
from changefeed.change import TopicPartition

A = TopicPartition("form", 0)
B = TopicPartition("form", 1)


def _partitions(group_id: str | None = None) -> PartitionConsumer:
    return PartitionConsumer(
        parse_kafka_url("kafka://127.0.0.1:9"),
        ("form",),
        client_id="test",
        strict=False,
        group_id=group_id,
        commit_offsets=True,
        commit_interval=1.0,
        consumer_config=None,
        on_offset_reset=lambda tp, needed, earliest: None,
    )


def test_at_end_only_when_every_assigned_partition_is() -> None:
    partitions = _partitions()
    assert not partitions.at_end()  # nothing assigned: nothing read to its end
    partitions.assigned = {A: 0, B: 0}
    partitions.eof.add(A)
    assert not partitions.at_end()
    partitions.eof.add(B)
    assert partitions.at_end()
    partitions.eof.discard(A)  # data came after A's end
    assert not partitions.at_end()


def test_an_end_of_a_partition_no_longer_held_does_not_count() -> None:
    partitions = _partitions()
    partitions.assigned = {A: 0, B: 0}
    partitions.eof.update({A, TopicPartition("form", 2)})
    assert not partitions.at_end()


def test_a_group_member_without_partitions_has_not_caught_up() -> None:
    partitions = _partitions("group")
    assert not partitions.caught_up({})
