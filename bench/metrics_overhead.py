"""Overhead of the Prometheus metrics listener on the pillow benchmark.

Publishes N stubs to an embedded SQLite log in a temp dir once, then consumes all of them
through a Pillow with a NoopProcessor, alternating rounds without and with `PillowMetrics`
attached (a fresh pillow name per round, so each reads the whole log from offset 0).
Prints per-mode medians and the overhead of metrics in percent (target: under 5%): the
median of the rounds' own with/without ratios, since the two runs of a round run back to
back and share the machine's state.

    python bench/metrics_overhead.py [--changes 200000] [--rounds 5] [--batch-size 1000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from changefeed.app import App
from changefeed.change import ChangeMeta, TopicPartition
from changefeed.metrics import PillowMetrics
from changefeed.pillow import BatchReport
from changefeed.processors.base import NoopProcessor


def publish(app: App, n: int) -> float:
    started = time.perf_counter()
    pub = app.publisher()
    chunk = 10_000
    for base in range(0, n, chunk):
        pub.publish_many(
            ("case", ChangeMeta(f"doc-{i}", "sql", "cases", document_type="case", domain="bench"))
            for i in range(base, min(n, base + chunk))
        )
    return time.perf_counter() - started


def consume(
    app: App, name: str, with_metrics: bool, batch_size: int, expected: int
) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) to read the whole log."""
    pillow = app.constructed_pillow(name, ["case"], NoopProcessor(), batch_size=batch_size)
    if with_metrics:
        metrics = PillowMetrics().attach(pillow)
    started, cpu_started = time.perf_counter(), time.process_time()
    total = pillow.run(forever=False)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    pillow.change_feed.close()
    if total != expected:
        raise SystemExit(f"{name}: read {total} changes, expected {expected}")
    if with_metrics:
        counted = metrics.registry.get_sample_value(
            "changefeed_changes_processed_total",
            {"pillow": name, "topic": "case", "partition": "0"},
        )
        if counted != expected:
            raise SystemExit(f"{name}: metrics counted {counted}, expected {expected}")
    return elapsed, cpu


def listener_cost(batches: int = 20_000) -> float:
    """Seconds one `PillowMetrics.on_batch` call takes (the whole per-batch cost of metrics)."""
    metrics = PillowMetrics()
    report = BatchReport(
        "bench", 1000, 1000, 0, 0.01, {"NoopProcessor": 0.001}, {TopicPartition("case", 0): 0}
    )
    started = time.perf_counter()
    for i in range(batches):
        report.checkpoint[TopicPartition("case", 0)] = (i + 1) * 1000
        metrics.on_batch(None, report)  # type: ignore[arg-type]
    return (time.perf_counter() - started) / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per mode")
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cf-bench-metrics-") as tmp:
        app = App(f"sqlite:///{Path(tmp)}/log.db", f"sqlite:///{Path(tmp)}/state.db")
        secs = publish(app, args.changes)
        print(f"published {args.changes} stubs in {secs:.2f}s ({args.changes / secs:,.0f}/s)")
        consume(app, "warmup", False, args.batch_size, args.changes)
        times: dict[bool, list[float]] = {False: [], True: []}
        cpu: dict[bool, list[float]] = {False: [], True: []}
        for r in range(args.rounds):
            # Alternate which mode goes first so drift on a noisy machine hits both alike.
            order = (False, True) if r % 2 == 0 else (True, False)
            for mode in order:
                name = f"bench_{r}_{'metrics' if mode else 'plain'}"
                wall, used = consume(app, name, mode, args.batch_size, args.changes)
                times[mode].append(wall)
                cpu[mode].append(used)
        app.close()

    print(
        f"{args.changes} changes per round, batch size {args.batch_size}, {args.rounds} rounds/mode"
    )
    for label, mode in (("without metrics", False), ("with metrics", True)):
        med = statistics.median(times[mode])
        runs = " ".join(f"{t:.2f}" for t in times[mode])
        print(
            f"{label:16} wall median {med:.3f}s {args.changes / med:>9,.0f} changes/s"
            f"  cpu median {statistics.median(cpu[mode]):.3f}s  [wall: {runs}]"
        )
    per_batch = listener_cost()
    batches = -(-args.changes // args.batch_size)
    share = per_batch * batches / statistics.median(cpu[False]) * 100
    print(
        f"listener cost: {per_batch * 1e6:.1f} us per batch x {batches} batches = "
        f"{per_batch * batches * 1000:.1f} ms per round ({share:.2f}% of the plain CPU median)"
    )
    # This machine switches between fast and slow phases lasting seconds, so a mode's median
    # can land in either: the two runs of one round (back to back) are compared instead.
    for label, series in (("wall", times), ("cpu", cpu)):
        medians = statistics.median(series[True]) / statistics.median(series[False])
        paired = statistics.median(
            with_m / without for with_m, without in zip(series[True], series[False], strict=True)
        )
        print(
            f"metrics overhead ({label}): {(paired - 1) * 100:+.1f}% (median of the rounds' "
            f"ratios {paired:.3f}; ratio of the medians {medians:.3f}; target < 5%)"
        )


if __name__ == "__main__":
    main()
