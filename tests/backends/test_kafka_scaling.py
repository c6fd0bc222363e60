"""Several processes of one pillow on Kafka: static striding, consumer groups with
rebalancing (join, leave, take over) and a broker restart, against a real broker (noida-db).

"Processes" are pillows in threads, each with its own Kafka consumer, sharing one checkpoint
store: to Kafka they are separate group members. The check in every test is the same:
every published change processed, none lost; and where partitions move between processes,
no finished batch processed twice.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from changefeed.backends import open_backend
from changefeed.backends.kafka import KafkaBackend, KafkaChangeFeed
from changefeed.change import TopicPartition
from changefeed.checkpoints import CheckpointStore
from changefeed.pillow import Pillow, stride
from tests._cli import ROOT, recorder_env
from tests.backends.test_kafka import make_pillow, stub, unique, wait_until
from tests.backends.test_kafka import recorder as make_recorder
from tests.doubles.processors import RecordingProcessor
from tests.harness.kafka import KafkaBroker

pytestmark = pytest.mark.slow  # server-heavy end to end; `pytest -m "not slow"` skips it

GROUP_CONSUMER = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


@pytest.fixture
def backend(kafka_bootstrap: str) -> KafkaBackend:
    b = open_backend(f"kafka://{kafka_bootstrap}")
    assert isinstance(b, KafkaBackend)
    return b


@pytest.fixture
def checkpoints(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(f"sqlite:///{tmp_path}/state.db")


class Running:
    """A pillow running forever in a thread, as one process of a pillow would."""

    def __init__(self, pillow: Pillow) -> None:
        self.pillow = pillow
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.pillow.run(forever=True)
        except BaseException as exc:  # reported by the test
            self.error = exc

    @property
    def feed(self) -> KafkaChangeFeed:
        feed = self.pillow.change_feed
        assert isinstance(feed, KafkaChangeFeed)
        return feed

    def stop(self) -> None:
        """Finish the batch in hand; the pillow then leaves the group itself (partitions
        move on)."""
        self.pillow.stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "pillow did not stop"
        assert self.error is None, self.error


def processed(recorders: Iterable[RecordingProcessor]) -> Counter[tuple[str, int, int]]:
    return Counter((t, p, o) for r in recorders for t, p, o, _ in r.seen)


def publish(backend: KafkaBackend, topic: str, ids: Sequence[str]) -> None:
    with backend.publisher() as pub:
        pub.publish_many([(topic, stub(i)) for i in ids])


def all_offsets(backend: KafkaBackend, topics: Sequence[str]) -> set[tuple[str, int, int]]:
    feed = backend.change_feed(list(topics))
    heads = feed.latest_offsets()
    feed.close()
    return {(tp.topic, tp.partition, o) for tp, head in heads.items() for o in range(head)}


def group_pillow(
    backend: KafkaBackend, topics: Sequence[str], checkpoints: CheckpointStore, name: str, **kw: Any
) -> tuple[Pillow, RecordingProcessor]:
    recorder = make_recorder()
    pillow = make_pillow(
        backend, topics, checkpoints, name, recorder, group_id=name, consumer_config=GROUP_CONSUMER
    )
    return pillow, recorder


def test_static_striding_splits_partitions_between_two_processes(
    backend: KafkaBackend, checkpoints: CheckpointStore
) -> None:
    t1, t2 = unique("stride"), unique("stride")
    backend.admin().create_topic(t1, 3)
    backend.admin().create_topic(t2, 2)
    publish(backend, t1, [f"a{i}" for i in range(150)])
    publish(backend, t2, [f"b{i}" for i in range(100)])
    name = unique("pillow")
    recorders = [make_recorder(), make_recorder()]
    pillows = [make_pillow(backend, [t1, t2], checkpoints, name, r) for r in recorders]
    threads = [
        threading.Thread(
            target=p.run, kwargs={"forever": False, "num_processes": 2, "process_number": k}
        )
        for k, p in enumerate(pillows)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    tps = pillows[0].change_feed.latest_offsets()
    for pillow in pillows:
        pillow.change_feed.close()
    for k, recorder in enumerate(recorders):
        mine = {TopicPartition(t, p) for t, p, _, _ in recorder.seen}
        assert mine == set(stride(tps, 2, k))
    done = processed(recorders)
    assert set(done) == all_offsets(backend, [t1, t2]) and set(done.values()) == {1}
    assert checkpoints.get(name) == tps


def test_consumer_group_splits_partitions_between_two_processes(
    backend: KafkaBackend, checkpoints: CheckpointStore
) -> None:
    topic = unique("group")
    backend.admin().create_topic(topic, 4)
    name = unique("pillow")
    (pa, ra), (pb, rb) = (group_pillow(backend, [topic], checkpoints, name) for _ in range(2))
    a = Running(pa)
    wait_until(lambda: len(a.feed.assignment) == 4, what="first process owns all partitions")
    b = Running(pb)
    wait_until(
        lambda: len(a.feed.assignment) == 2 and len(b.feed.assignment) == 2,
        what="partitions split 2/2",
    )
    assert not set(a.feed.assignment) & set(b.feed.assignment)
    publish(backend, topic, [f"d{i}" for i in range(400)])
    expected = all_offsets(backend, [topic])
    wait_until(lambda: set(processed([ra, rb])) == expected, what="all changes processed")
    a.stop()
    b.stop()
    done = processed([ra, rb])
    assert set(done) == expected and set(done.values()) == {1}, "processed twice"
    assert {p for _, p, _, _ in ra.seen}.isdisjoint({p for _, p, _, _ in rb.seen})
    assert sum(checkpoints.get(name).values()) == 400


def test_processes_join_and_leave_mid_run_without_loss_or_double_processing(
    backend: KafkaBackend, checkpoints: CheckpointStore
) -> None:
    topic = unique("rebalance")
    backend.admin().create_topic(topic, 4)
    name = unique("pillow")
    (pa, ra), (pb, rb), (pc, rc) = (
        group_pillow(backend, [topic], checkpoints, name) for _ in range(3)
    )
    a = Running(pa)
    publish(backend, topic, [f"first{i}" for i in range(300)])
    wait_until(lambda: len(ra.seen) > 0, what="first process started")
    b = Running(pb)  # joins while changes are in flight
    publish(backend, topic, [f"second{i}" for i in range(300)])
    wait_until(lambda: len(b.feed.assignment) > 0, what="second process got partitions")
    a.stop()  # leaves mid-run: its partitions move to b
    publish(backend, topic, [f"third{i}" for i in range(300)])
    wait_until(lambda: len(b.feed.assignment) == 4, what="second process took over")
    c = Running(pc)  # another joins, then the old one leaves
    wait_until(lambda: len(c.feed.assignment) > 0, what="third process got partitions")
    publish(backend, topic, [f"fourth{i}" for i in range(300)])
    b.stop()
    expected = all_offsets(backend, [topic])
    wait_until(lambda: set(processed([ra, rb, rc])) == expected, what="all changes processed")
    c.stop()
    done = processed([ra, rb, rc])
    assert set(done) == expected and len(expected) == 1200
    assert set(done.values()) == {1}, "a finished batch was processed twice"
    assert sum(checkpoints.get(name).values()) == 1200


def _group_members(bootstrap: str, group: str) -> list[str]:
    """The member ids the broker has for ``group`` (DescribeGroups)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    described = admin.describe_consumer_groups([group])[group].result(timeout=30)
    return [member.member_id for member in described.members]


@pytest.mark.parametrize("command", [("run", "recorder"), ("run", "--all")], ids=["run", "all"])
def test_changefeed_run_in_group_mode_leaves_the_group_on_sigterm(
    backend: KafkaBackend, kafka_bootstrap: str, tmp_path: Path, command: tuple[str, ...]
) -> None:
    """``changefeed run`` of a consumer-group pillow, alone or as a child of the supervisor
    (``run --all``), stopped by SIGTERM, leaves its group on the way out: the broker has no
    member left, so on a restart the group's partitions move at once instead of after the
    session timeout (our test broker never expires a member, so without the leave it would
    stay for good)."""
    topic, group = unique("leave"), unique("group")
    backend.admin().create_topic(topic, 2)
    env = {
        **recorder_env(tmp_path),
        "CHANGEFEED_LOG": f"kafka://{kafka_bootstrap}",
        "RECORDER_TOPICS": topic,
        "RECORDER_GROUP": group,
    }
    recorded = tmp_path / "recorded.txt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "changefeed", *command],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        publish(backend, topic, [f"d{i}" for i in range(20)])
        wait_until(
            lambda: recorded.exists() and len(recorded.read_text().splitlines()) == 20,
            what="the pillow read every change",
        )
        assert len(_group_members(kafka_bootstrap, group)) == 1
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert _group_members(kafka_bootstrap, group) == []


def test_broker_restart_mid_run_loses_nothing(
    backend: KafkaBackend, checkpoints: CheckpointStore, kafka_broker: KafkaBroker
) -> None:
    topic = unique("restart")
    backend.admin().create_topic(topic, 2)
    name = unique("pillow")
    recorder = make_recorder()
    running = Running(make_pillow(backend, [topic], checkpoints, name, recorder))
    publisher = backend.publisher()
    try:
        publisher.publish_many([(topic, stub(f"before{i}")) for i in range(100)])
        wait_until(lambda: sum(checkpoints.get(name).values()) == 100, what="first 100")
        kafka_broker.restart()
        publisher.publish_many([(topic, stub(f"after{i}")) for i in range(100)])
        wait_until(lambda: sum(checkpoints.get(name).values()) == 200, what="all 200")
    finally:
        publisher.close()
        running.stop()
    assert set(recorder.ids) == {f"before{i}" for i in range(100)} | {
        f"after{i}" for i in range(100)
    }
