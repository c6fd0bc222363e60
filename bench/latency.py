"""Benchmark: publish-to-processed latency at fixed rates, and full-load throughput, with and
without adaptive batching, on the embedded log and on Kafka, in one run.

* latency: a pillow with default settings runs in a process of its own; this process
  publishes at a fixed rate (100, 1,000 and 10,000 changes/s: every change due by now is
  published in one call, so at high rates several share a publish). The pillow's processor
  records, for each change, the time its call returned minus the change's
  ``publish_timestamp``. Reported: p50, p99 and max per rate, backend and batching mode.
* throughput: N stubs published first, then rounds alternate a pillow with adaptive
  batching (the default) and one with ``adaptive=False`` over the same topic (no-op bulk
  processor, checkpoints in a temp SQLite state DB; fresh pillow name each round).
  Reported: per-round changes/s, medians and the adaptive/non-adaptive ratio.

Kafka runs on its own noida-db broker (`changefeed.testing.servers.NoidaServer`) on a free
port, as bench/kafka_pillow.py does.

    python bench/latency.py [--rates 100,1000,10000] [--seconds 5] [--partitions 4]
                            [--stubs 200000] [--kafka-stubs 100000] [--rounds 5]
                            [--backends embedded,kafka] [--modes adaptive,fixed]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path

from changefeed.backends import Backend, Publisher, open_backend
from changefeed.change import Change, ChangeMeta
from changefeed.checkpoints import CheckpointStore
from changefeed.pillow import BatchPolicy, Pillow
from changefeed.processors import BulkProcessor, ChangeFailure, NoopProcessor
from changefeed.testing.servers import NoidaServer


def stub(doc_id: str) -> ChangeMeta:
    return ChangeMeta(doc_id, "sql", "cases", document_type="case", domain="bench", version=1)


class LatencyRecorder(BulkProcessor):
    """Records now - publish_timestamp for every change, taken when the call returns; stops
    the pillow once ``expected`` changes were seen."""

    needs_documents = False

    def __init__(self, expected: int, ready: Connection) -> None:
        self.expected = expected
        self.ready = ready
        self.latencies: list[float] = []
        self.pillow: Pillow | None = None
        self.warm = False

    @property
    def name(self) -> str:
        return "latency"

    def process_changes(self, changes: Sequence[Change]) -> list[ChangeFailure]:
        stamps = [c.metadata.publish_timestamp for c in changes if c.metadata is not None]
        done = time.time()
        if not self.warm:  # the warm-up stub: the pillow is reading, start publishing
            self.warm = True
            self.ready.send("ready")
            return []
        self.latencies.extend(done - ts for ts in stamps if ts is not None)
        if len(self.latencies) >= self.expected and self.pillow is not None:
            self.pillow.stop()
        return []


def pillow_process(
    url: str, topic: str, state: str, adaptive: bool, expected: int, out: Connection
) -> None:
    backend = open_backend(url)
    feed = backend.change_feed([topic], client_id=f"latency-{os.getpid()}")
    recorder = LatencyRecorder(expected, out)
    pillow = Pillow(
        "latency",
        feed,
        recorder,
        checkpoints=CheckpointStore(state),
        batching=BatchPolicy(adaptive=adaptive),  # default batch_size and max_wait
    )
    recorder.pillow = pillow
    pillow.run(forever=True)
    out.send(recorder.latencies)
    feed.close()
    backend.close()


def publish_at_rate(pub: Publisher, topic: str, rate: float, seconds: float) -> float:
    """Publish ``rate * seconds`` stubs, each as soon as it is due; returns the rate met."""
    n = int(rate * seconds)
    start = time.perf_counter()
    sent = 0
    while sent < n:
        now = time.perf_counter()
        due = min(n, int((now - start) * rate) + 1)
        if due > sent:
            pub.publish_many((topic, stub(f"lat-{i}")) for i in range(sent, due))
            sent = due
        else:
            time.sleep(max(0.0, start + sent / rate - now))
    return n / (time.perf_counter() - start)


def measure_latency(
    backend: Backend, state_dir: Path, rate: float, seconds: float, partitions: int, adaptive: bool
) -> tuple[list[float], float]:
    topic = f"lat-{int(rate)}-{'a' if adaptive else 'f'}-{os.getpid()}"
    backend.admin().create_topic(topic, partitions)
    expected = int(rate * seconds)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=pillow_process,
        args=(backend.url, topic, f"sqlite:///{state_dir}/{topic}.db", adaptive, expected, child),
    )
    proc.start()
    try:
        # One publisher for the warm-up stub and the run: a new Kafka producer's first
        # publish waits for its connection, which is not the pillow's latency.
        with backend.publisher() as pub:
            pub.publish(topic, stub("warmup"))
            if not parent.poll(60) or parent.recv() != "ready":
                raise RuntimeError("the pillow process did not start")
            met = publish_at_rate(pub, topic, rate, seconds)
        if not parent.poll(60 + seconds):
            raise RuntimeError("the pillow process did not report")
        latencies: list[float] = parent.recv()
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    return latencies, met


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def throughput(
    backend: Backend, state: str, topic: str, n: int, name: str, adaptive: bool
) -> tuple[float, float]:
    """(changes per wall-clock second, changes per CPU second of this process)"""
    feed = backend.change_feed([topic], client_id=name)
    pillow = Pillow(
        name,
        feed,
        NoopProcessor(),
        checkpoints=CheckpointStore(state),
        batching=BatchPolicy(adaptive=adaptive),
    )
    start, cpu = time.perf_counter(), time.process_time()
    read = pillow.run(forever=False)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    feed.close()
    if read != n:
        raise RuntimeError(f"read {read} changes, expected {n}")
    return n / elapsed, n / cpu


def fill(backend: Backend, topic: str, n: int, partitions: int) -> None:
    backend.admin().create_topic(topic, partitions)
    with backend.publisher() as pub:
        for start in range(0, n, 10_000):
            pub.publish_many(
                (topic, stub(f"case-{i}")) for i in range(start, min(n, start + 10_000))
            )


def run_backend(label: str, url: str, args: argparse.Namespace, n: int) -> None:
    backend = open_backend(url)
    modes = [m == "adaptive" for m in args.modes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        state_dir = Path(tmp)
        print(f"\n## {label}: publish-to-processed latency (default settings)")
        print("| rate (changes/s) | batching | rate met | p50 ms | p99 ms | max ms | changes |")
        print("|---|---|---|---|---|---|---|")
        for rate in (float(r) for r in args.rates.split(",") if r):
            for adaptive in modes:
                lat, met = measure_latency(
                    backend, state_dir, rate, args.seconds, args.partitions, adaptive
                )
                print(
                    f"| {rate:,.0f} | {'adaptive' if adaptive else 'fixed'} | {met:,.0f} "
                    f"| {percentile(lat, 0.5) * 1e3:.1f} | {percentile(lat, 0.99) * 1e3:.1f} "
                    f"| {max(lat) * 1e3:.1f} | {len(lat)} |",
                    flush=True,
                )
        topic = f"full-{os.getpid()}"
        fill(backend, topic, n, args.partitions)
        state = f"sqlite:///{state_dir}/full.db"
        rates: dict[bool, list[float]] = {True: [], False: []}
        cpus: dict[bool, list[float]] = {True: [], False: []}
        print(f"\n## {label}: full-load throughput, {n:,} changes, {args.partitions} partitions")
        for r in range(args.rounds):
            for adaptive in (True, False) if r % 2 == 0 else (False, True):
                rate, cpu = throughput(backend, state, topic, n, f"full-{r}-{adaptive}", adaptive)
                rates[adaptive].append(rate)
                cpus[adaptive].append(cpu)
                mode = "adaptive" if adaptive else "fixed"
                print(f"round {r + 1} {mode}: {rate:,.0f}/s ({cpu:,.0f}/CPU-s)", flush=True)
        a, f = statistics.median(rates[True]), statistics.median(rates[False])
        own = statistics.median(x / y for x, y in zip(rates[True], rates[False], strict=True))
        print(
            f"median adaptive {a:,.0f}/s, fixed {f:,.0f}/s, ratio {a / f:.3f} "
            f"(median of the rounds' ratios {own:.3f})"
        )
        a, f = statistics.median(cpus[True]), statistics.median(cpus[False])
        own = statistics.median(x / y for x, y in zip(cpus[True], cpus[False], strict=True))
        print(
            f"per CPU-second: adaptive {a:,.0f}, fixed {f:,.0f}, ratio {a / f:.3f} "
            f"(median of the rounds' ratios {own:.3f})"
        )
    backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="100,1000,10000", help="'' skips latency")
    parser.add_argument("--seconds", type=float, default=5.0, help="publishing time per rate")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--stubs", type=int, default=200_000, help="full load, embedded log")
    parser.add_argument("--kafka-stubs", type=int, default=100_000, help="full load, Kafka")
    parser.add_argument("--rounds", type=int, default=5, help="full-load rounds")
    parser.add_argument("--backends", default="embedded,kafka")
    parser.add_argument("--modes", default="adaptive,fixed", help="latency runs to make")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}, {os.cpu_count()} CPUs")
    backends = args.backends.split(",")
    if "embedded" in backends:
        with tempfile.TemporaryDirectory(prefix="bench-latency-log-") as d:
            run_backend(
                "embedded log",
                f"sqlite:///{d}/log.db?partitions={args.partitions}",
                args,
                args.stubs,
            )
    if "kafka" in backends:
        broker = NoidaServer("kafka").start()
        try:
            run_backend("Kafka (noida-db)", broker.kafka_url, args, args.kafka_stubs)
        finally:
            broker.stop()
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
