"""Benchmark: change stubs through a pillow on Kafka vs. a hand-written consumer loop.

Starts its own Kafka-protocol broker (noida-db, from PyPI) on a free port, publishes N stubs
with the asynchronous publisher (stubs/s), then alternates, in one process run, a pillow with
a no-op bulk processor (checkpoints in a temp SQLite state DB) and a hand-written
confluent-kafka ``consume()`` loop that decodes each stub with ``ChangeMeta.decode`` (the
wire contract's decoder: in C for stubs with known fields, unknown fields kept) over the
same topic: the limit for a Python consumer. Prints per-round numbers, medians and the pillow/loop ratio.

    python bench/kafka_pillow.py [--stubs 200000] [--rounds 3] [--partitions 4]
                                 [--publish-rounds 3] [--batch-size 5000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as KafkaTopicPartition

from changefeed.backends.kafka import KafkaBackend
from changefeed.change import ChangeMeta
from changefeed.checkpoints import CheckpointStore
from changefeed.pillow import BatchPolicy, Pillow
from changefeed.processors import NoopProcessor
from changefeed.testing.servers import NoidaServer


def publish(backend: KafkaBackend, topic: str, n: int) -> tuple[float, float]:
    """(stubs/s until every stub is acknowledged, stubs/s handed to the client)"""
    stubs = [
        ChangeMeta(f"doc-{i}", "sql", "main", document_type="form", domain="bench", version=1)
        for i in range(n)
    ]
    with backend.publisher(asynchronous=True) as pub:
        start = time.perf_counter()
        for meta in stubs:
            pub.publish(topic, meta)
        queued = time.perf_counter()
        pub.flush()
        return n / (time.perf_counter() - start), n / (queued - start)


Rates = tuple[float, float]
"""(changes per wall-clock second, changes per CPU second of this process)"""


def run_pillow(
    backend: KafkaBackend, topic: str, state: str, n: int, round_no: int, batch_size: int
) -> Rates:
    name = f"bench-{round_no}"
    feed = backend.change_feed([topic], client_id=name, idle_timeout=1.0)
    pillow = Pillow(
        name,
        feed,
        NoopProcessor(),
        checkpoints=CheckpointStore(state),
        batching=BatchPolicy(batch_size),
    )
    start, cpu = time.perf_counter(), time.process_time()
    read = pillow.run(forever=False)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    feed.close()
    assert read == n, f"pillow read {read} of {n}"
    return n / elapsed, n / cpu


def run_loop(bootstrap: str, topic: str, partitions: int, n: int) -> Rates:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "bench-loop", "enable.auto.commit": False}
    )
    start, cpu = time.perf_counter(), time.process_time()
    consumer.assign([KafkaTopicPartition(topic, p, 0) for p in range(partitions)])
    decode = ChangeMeta.decode  # the wire contract's decoder (unknown fields kept, errors worded)
    count = 0
    while count < n:
        for msg in consumer.consume(5000, 1.0):
            if msg.error() is None:
                decode(msg.value())  # type: ignore[arg-type]
                count += 1
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    consumer.close()
    return n / elapsed, n / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stubs", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--publish-rounds", type=int, default=3)
    parser.add_argument(
        "--batch-size", type=int, default=5000, help="pillow batch size (as bench/pillow_local.py)"
    )
    args = parser.parse_args()
    broker = NoidaServer("kafka").start()
    base, bootstrap = broker.base, broker.address
    try:
        backend = KafkaBackend.from_url(f"kafka://{bootstrap}")
        topic = f"bench-{os.getpid()}"
        backend.admin().create_topic(topic, args.partitions)
        # The first publish fills the topic the pillow reads; the others go to scratch topics.
        published: list[tuple[float, float]] = []
        for r in range(args.publish_rounds):
            target = topic if r == 0 else f"{topic}-publish-{r}"
            if r:
                backend.admin().create_topic(target, args.partitions)
            published.append(publish(backend, target, args.stubs))
            print(
                f"async publish {r + 1}: {args.stubs} stubs at {published[-1][0]:,.0f} stubs/s "
                f"until all acknowledged ({published[-1][1]:,.0f} stubs/s handed to the client)"
            )
        print(
            f"median async publish: {statistics.median(a for a, _ in published):,.0f} stubs/s "
            "until all acknowledged"
        )
        state = f"sqlite:///{base}/state.db"
        pillow_rates: list[Rates] = []
        loop_rates: list[Rates] = []
        for r in range(args.rounds):
            pillow_rates.append(run_pillow(backend, topic, state, args.stubs, r, args.batch_size))
            loop_rates.append(run_loop(bootstrap, topic, args.partitions, args.stubs))
            print(
                f"round {r + 1}: pillow {pillow_rates[-1][0]:,.0f}/s "
                f"({pillow_rates[-1][1]:,.0f}/CPU-s)  hand-written loop {loop_rates[-1][0]:,.0f}/s "
                f"({loop_rates[-1][1]:,.0f}/CPU-s)"
            )
        for i, what in ((0, "changes/s"), (1, "changes per CPU-second")):
            p = statistics.median(x[i] for x in pillow_rates)
            h = statistics.median(x[i] for x in loop_rates)
            per_round = statistics.median(
                a[i] / b[i] for a, b in zip(pillow_rates, loop_rates, strict=True)
            )
            print(
                f"median {what}: pillow {p:,.0f}, hand-written loop {h:,.0f}, ratio {p / h:.2f} "
                f"(median of the rounds' ratios {per_round:.2f})"
            )
    finally:
        broker.close()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
