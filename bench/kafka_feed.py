"""Benchmark: the Kafka feed's read loop alone, optionally against another checkout.

Starts its own Kafka-protocol broker (noida-db) on a free port, publishes N stubs to a topic
of 4 partitions, then reads them all with ``KafkaChangeFeed.iter_change_batches`` (no
pillow, no checkpoints) in a fresh process per run, and reports the CPU time of the reading
thread: librdkafka's own threads (fetching, decompressing) are left out, so what is measured
is the Python loop and the decoding it drives. With ``--against OTHER_CHECKOUT`` the runs
alternate between this checkout and that one's ``src`` on the same broker and topic (each
going first in every other pair), so machine noise hits both alike, and the per-pair ratio (this / other) is printed.

    python bench/kafka_feed.py [--stubs 200000] [--runs 8] [--against OTHER_CHECKOUT]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def read(bootstrap: str, topic: str, n: int) -> None:
    """A child: read the topic from the start; print reading-thread CPU and wall seconds."""
    from changefeed.backends.kafka import KafkaBackend

    backend = KafkaBackend.from_url(f"kafka://{bootstrap}")
    feed = backend.change_feed([topic], client_id=f"feed-bench-{os.getpid()}")
    since = dict.fromkeys(feed.topic_partitions(), 0)
    assert feed.consumer is not None  # made before the clock starts
    cpu, wall = time.thread_time(), time.perf_counter()
    count = 0
    for changes in feed.iter_change_batches(since):
        if changes:
            count += len(changes)
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    feed.close()
    if count != n:
        raise SystemExit(f"read {count} changes of {n}")
    print(f"{cpu:.6f} {wall:.6f}")


def run(checkout: Path, bootstrap: str, topic: str, n: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one read in a fresh process of ``checkout``."""
    env = dict(os.environ, PYTHONPATH=f"{checkout / 'src'}{os.pathsep}{checkout}")
    argv = [sys.executable, str(HERE / "bench" / "kafka_feed.py"), "--child", bootstrap, topic]
    out = subprocess.run(
        [*argv, str(n)], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stubs", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--against", type=Path, help="another checkout to alternate with")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        bootstrap, topic, n = args.child
        read(bootstrap, topic, int(n))
        return

    from changefeed.backends.kafka import KafkaBackend
    from changefeed.change import ChangeMeta
    from changefeed.testing.servers import NoidaServer

    broker = NoidaServer("kafka").start()
    try:
        backend = KafkaBackend.from_url(f"kafka://{broker.address}")
        topic = "feed-bench"
        backend.admin().create_topic(topic, 4)
        with backend.publisher(asynchronous=True) as pub:
            for i in range(args.stubs):
                meta = ChangeMeta(f"doc-{i}", "sql", "main", document_type="form", version=1)
                pub.publish(topic, meta)
            pub.flush()
        sides = [("this", HERE)] + ([("other", args.against.resolve())] if args.against else [])
        results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in sides}
        for i in range(args.runs):
            for name, checkout in sides if i % 2 == 0 else sides[::-1]:  # who goes first, too
                results[name].append(run(checkout, broker.address, topic, args.stubs))
        for name, times in results.items():
            cpu = statistics.median(c for c, _ in times)
            wall = statistics.median(w for _, w in times)
            print(
                f"{name}: median {args.stubs / cpu:,.0f} changes per CPU-second of the reading "
                f"thread ({cpu:.3f} s), {args.stubs / wall:,.0f} changes/s wall"
            )
        if args.against:
            ratios = [o[0] / t[0] for t, o in zip(results["this"], results["other"], strict=True)]
            print(
                f"this / other, speed per CPU-second, median of {len(ratios)} pairs: "
                f"{statistics.median(ratios):.3f}"
            )
    finally:
        broker.close()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
