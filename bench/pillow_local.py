"""Embedded-log benchmark: batch publish, pillow consume, hand-written loop, memory.

Run: ``python bench/pillow_local.py`` (add ``--quick`` for a smaller run; ``--pipeline both``
also runs a pipelined pillow each round, to show what read-ahead gives stub-only processors).

* publish: N stubs in batches of 10k through the SQLite publisher (stubs/s)
* pillow: the same N changes through a Pillow with a no-op bulk processor, checkpointing
  every batch (changes/s)
* by hand: the loop a user would write against the SQLite file (read batches in offset
  order, decode each batch with ``ChangeMeta.decode_array``), without checkpoints; the
  ratio pillow / by-hand is the framework's overhead
* memory: peak RSS of a pillow process consuming 100k vs 1M changes (published by another
  process first)

Rounds alternate pillow and by-hand on the same log so machine noise hits both alike;
medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from changefeed import App, ChangeMeta, NoopProcessor


def make_stubs(n: int) -> list[ChangeMeta]:
    return [
        ChangeMeta(f"case-{i}", "sql", "cases", document_type="case", domain="demo", version=1)
        for i in range(n)
    ]


def publish(app: App, stubs: list[ChangeMeta], batch: int = 10_000) -> float:
    pub = app.publisher()
    started = time.perf_counter()
    for i in range(0, len(stubs), batch):
        pub.publish_many(("case", m) for m in stubs[i : i + batch])
    return time.perf_counter() - started


def consume_pillow(app: App, name: str, pipeline: bool | None = None) -> tuple[int, float]:
    pillow = app.constructed_pillow(
        name, ["case"], NoopProcessor(), batch_size=5000, pipeline=pipeline
    )
    started = time.perf_counter()
    n = pillow.run(forever=False)
    return n, time.perf_counter() - started


def consume_by_hand(db_path: str) -> tuple[int, float]:
    """What a user would write without the framework: read each partition's batches in
    offset order and decode every stub."""
    started = time.perf_counter()
    conn = sqlite3.connect(db_path)
    n = 0
    for (partition,) in conn.execute("SELECT DISTINCT partition FROM heads ORDER BY partition"):
        last = -1
        while True:
            rows = conn.execute(
                "SELECT base_offset, payload FROM batches WHERE partition=? AND base_offset>? "
                "ORDER BY base_offset LIMIT 4",
                (partition, last),
            ).fetchall()
            if not rows:
                break
            for base, payload in rows:
                # The whole batch in one C call (per stub only if one has unknown fields).
                stubs = ChangeMeta.decode_array(payload)
                if stubs is None:
                    stubs = [ChangeMeta.from_dict(d) for d in orjson.loads(payload)]
                n += len(stubs)
                last = base
    conn.close()
    return n, time.perf_counter() - started


def memory_child(directory: str, n: int, role: str) -> None:
    """Publish n stubs, or consume them through a pillow and print this process's peak RSS
    (separate processes, so the consumer's peak is the pillow's alone)."""
    app = App(f"sqlite:///{directory}/log.db?partitions=4", f"sqlite:///{directory}/state.db")
    if role == "publish":
        pub = app.publisher()
        for i in range(0, n, 10_000):
            pub.publish_many(("case", m) for m in make_stubs(min(10_000, n - i)))
        app.close()
        return
    count, _ = consume_pillow(app, "memory")
    assert count == n, (count, n)
    print(
        json.dumps({"n": count, "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss})
    )


def memory_run(n: int) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as d:
        for role in ("publish", "consume"):
            out = subprocess.run(
                [sys.executable, __file__, "--memory-child", str(n), "--role", role, "--dir", d],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stubs", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--pipeline", choices=("off", "both"), default="off")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--role", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.dir, args.memory_child, args.role)
        return
    n = 20_000 if args.quick else args.stubs
    pub_rates, pillow_rates, hand_rates = [], [], []
    piped_rates: list[float] = []
    piped_ratios: list[float] = []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as d:
            app = App(f"sqlite:///{d}/log.db?partitions=4", f"sqlite:///{d}/state.db")
            stubs = make_stubs(n)
            pub_rates.append(n / publish(app, stubs))
            del stubs
            order = ["pillow", "hand"] if r % 2 == 0 else ["hand", "pillow"]
            if args.pipeline == "both":
                order.insert(r % 3, "pipelined")
            for which in order:
                if which == "pillow":
                    count, secs = consume_pillow(app, f"bench-{r}", pipeline=False)
                    pillow_rates.append(count / secs)
                elif which == "pipelined":
                    count, secs = consume_pillow(app, f"bench-p{r}", pipeline=True)
                    piped_rates.append(count / secs)
                else:
                    count, secs = consume_by_hand(str(Path(d) / "log.db"))
                    hand_rates.append(count / secs)
                assert count == n, (which, count, n)
            app.close()
    result = {
        "stubs": n,
        "rounds": args.rounds,
        "publish_stubs_per_s": round(statistics.median(pub_rates)),
        "pillow_changes_per_s": round(statistics.median(pillow_rates)),
        "by_hand_changes_per_s": round(statistics.median(hand_rates)),
        "pillow_vs_by_hand": round(
            statistics.median(pillow_rates) / statistics.median(hand_rates), 3
        ),
        "cpus": os.cpu_count(),
    }
    if piped_rates:
        piped_ratios = [p / q for p, q in zip(piped_rates, pillow_rates, strict=True)]
        result["pillow_pipelined_changes_per_s"] = round(statistics.median(piped_rates))
        result["pipelined_vs_sequential_rounds_median"] = round(statistics.median(piped_ratios), 3)
    if not args.no_memory and not args.quick:
        small, large = memory_run(100_000), memory_run(1_000_000)
        result["pillow_peak_rss_mb_100k"] = round(small["peak_rss_kb"] / 1024, 1)
        result["pillow_peak_rss_mb_1m"] = round(large["peak_rss_kb"] / 1024, 1)
        result["peak_rss_1m_vs_100k"] = round(large["peak_rss_kb"] / small["peak_rss_kb"], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
