"""Report tables, side by side with hand-written code doing the same work.

1. ``upsert``: ReportTableProcessor.process_changes vs a hand-written batched upsert
   (psycopg 3 ``executemany`` of ``INSERT .. ON CONFLICT DO UPDATE``, one transaction per
   batch) on the same documents; each round inserts every document, then updates every one.
2. ``e2e``: stubs in the log (Kafka by default) -> a Pillow reading them, bulk-fetching the
   documents from PostgreSQL (SQLDocumentStore) and running ReportTableProcessor, checkpoints
   in PostgreSQL -> vs a hand-written loop: a confluent-kafka consumer, one bulk fetch
   (``WHERE id = ANY``) and one COPY-style upsert (COPY into a temp table, then
   ``INSERT .. SELECT .. ON CONFLICT``) plus an offsets upsert per batch.

Rounds alternate between the sides so machine noise hits all; prints medians and the ratio
ours/hand-written throughput. End to end, ours runs twice per round, pipelined (a reader
thread reads and fetches batch N+1 while batch N is processed) and sequential, and the
rounds' own ratios and where the time goes (read, fetch, process, checkpoint, and each
thread's waits) are printed too. Starts its own PostgreSQL cluster and, for Kafka, its
own noida-db broker (``--log kafka`` ); ``--log sqlite`` runs the end-to-end benchmark on
the embedded SQLite log instead (the hand-written loop then reads it through the backend's
change feed).

    python bench/report_tables.py [--only upsert|e2e] [--docs 30000] [--rounds 5]
        [--pipeline both|on|off]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import sqlalchemy as sa

from changefeed.app import App
from changefeed.backends.base import ChangeFeed, FeedOptions
from changefeed.backends.kafka.consumer import CONSUMER_DEFAULTS
from changefeed.batch import BatchReport
from changefeed.change import Change, ChangeMeta
from changefeed.checkpoints import CheckpointStore
from changefeed.pillow import Pillow, PillowListener
from changefeed.processors.reports import ReportTableProcessor
from changefeed.stores.sql import SQLDocumentStore
from changefeed.testing.postgres import TempPostgresCluster
from changefeed.testing.servers import NoidaServer

SPEC: dict[str, Any] = {
    "name": "cases",
    "table": "report_cases",
    "filter": {"type": "equals", "property_name": "doc_type", "value": "case"},
    "columns": [
        {"name": "owner_id"},
        {"name": "status"},
        {"name": "priority", "type": "integer"},
        {"name": "score", "type": "float"},
        {"name": "opened_on", "type": "date"},
        {"name": "closed", "type": "boolean"},
        {
            "name": "city",
            "expression": {"type": "property_path", "property_path": ["address", "city"]},
        },
    ],
}
COLUMNS = [
    "doc_id",
    "row_num",
    "owner_id",
    "status",
    "priority",
    "score",
    "opened_on",
    "closed",
    "city",
]


def make_doc(i: int, generation: int = 0) -> dict[str, Any]:
    return {
        "doc_type": "case",
        "owner_id": f"owner-{i % 97}",
        "status": ("open", "closed", "pending")[(i + generation) % 3],
        "priority": str((i + generation) % 5),
        "score": (i * 7 + generation) % 1000 / 10,
        "opened_on": f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}",
        "closed": (i + generation) % 4 == 0,
        "address": {"city": f"city-{i % 50}", "street": "Main St"},
        "notes": "x" * 200,
    }


def hand_row(doc_id: str, doc: dict[str, Any]) -> tuple[Any, ...]:
    """What a hand-written loop computes per document (same values as the data source)."""
    return (
        doc_id, 0, doc.get("owner_id"), doc.get("status"), int(doc["priority"]),
        float(doc["score"]), dt.date.fromisoformat(doc["opened_on"]), doc.get("closed"),
        (doc.get("address") or {}).get("city"),
    )  # fmt: skip


def report_ddl(table: str) -> str:
    return (
        f"CREATE TABLE {table} (doc_id varchar(255) NOT NULL, row_num integer NOT NULL, "
        "owner_id text, status text, priority bigint, score double precision, opened_on date, "
        "closed boolean, city text, PRIMARY KEY (doc_id, row_num))"
    )


UPSERT_SET = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[2:])


HAND_BOUNDED = "hand-written, bounded"
"""The hand-written Kafka loop with our consumer's ``queued.min.messages``."""


def median_rate(times: list[float], n: int) -> tuple[float, float]:
    med = statistics.median(times)
    return med, n / med


def report(title: str, n: int, ours: list[float], hand: list[float]) -> float:
    o_med, o_rate = median_rate(ours, n)
    h_med, h_rate = median_rate(hand, n)
    ratio = o_rate / h_rate
    print(f"\n{title}")
    print(
        f"  ours        median {o_med:7.3f}s  {o_rate:10,.0f} docs/s   rounds {[round(t, 3) for t in ours]}"
    )
    print(
        f"  hand-written median {h_med:7.3f}s  {h_rate:10,.0f} docs/s   rounds {[round(t, 3) for t in hand]}"
    )
    print(f"  ratio ours/hand-written: {ratio:.2f}x")
    return ratio


# -- 1. processor vs hand-written batched upsert --------------------------------------------


def bench_upsert(pg: TempPostgresCluster, docs: int, rounds: int, batch: int) -> float:
    db = pg.create_database(f"bench_{uuid.uuid4().hex[:8]}")
    url, dsn = pg.url(db), pg.dsn(db)
    generations = [[(f"case-{i:07d}", make_doc(i, g)) for i in range(docs)] for g in (0, 1)]
    proc = ReportTableProcessor(SPEC, url)
    proc.bootstrap()
    hand_conn = psycopg.connect(dsn)
    hand_conn.execute(report_ddl("hand_cases"))
    hand_conn.commit()
    insert = (
        f"INSERT INTO hand_cases ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))}) "
        f"ON CONFLICT (doc_id, row_num) DO UPDATE SET {UPSERT_SET}"
    )

    def ours() -> float:
        with proc.engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE report_cases"))
        batches = []
        for generation in generations:
            for start in range(0, docs, batch):
                changes = []
                for j, (doc_id, doc) in enumerate(generation[start : start + batch]):
                    c = Change("case", 0, start + j, ChangeMeta(doc_id, "sql", "cases"))
                    c.set_document(doc)
                    changes.append(c)
                batches.append(changes)
        t0 = time.perf_counter()
        for changes in batches:
            assert not proc.process_changes(changes)
        return time.perf_counter() - t0

    def hand() -> float:
        hand_conn.execute("TRUNCATE hand_cases")
        hand_conn.commit()
        t0 = time.perf_counter()
        for generation in generations:
            for start in range(0, docs, batch):
                rows = [
                    hand_row(doc_id, doc)
                    for doc_id, doc in generation[start : start + batch]
                    if doc.get("doc_type") == "case"
                ]
                with hand_conn.cursor() as cur:
                    cur.executemany(insert, rows)
                hand_conn.commit()
        return time.perf_counter() - t0

    ours_t, hand_t = alternate(rounds, ours, hand)
    with proc.engine.connect() as conn:
        n_ours = conn.execute(sa.text("SELECT count(*) FROM report_cases")).scalar_one()
    n_hand = hand_conn.execute("SELECT count(*) FROM hand_cases").fetchone()
    assert n_ours == docs and n_hand is not None and n_hand[0] == docs, (n_ours, n_hand)
    proc.close()
    hand_conn.close()
    return report(
        f"report table upsert, PostgreSQL: {docs} docs inserted then updated, batches of {batch}",
        2 * docs,
        ours_t,
        hand_t,
    )


def alternate(
    rounds: int, ours: Callable[[], float], hand: Callable[[], float]
) -> tuple[list[float], list[float]]:
    ours(), hand()  # warm up: caches, connections, compiled statements
    ours_t: list[float] = []
    hand_t: list[float] = []
    for r in range(rounds):
        first, second = (ours, hand) if r % 2 == 0 else (hand, ours)
        a, b = first(), second()
        if r % 2 == 1:
            a, b = b, a
        ours_t.append(a)
        hand_t.append(b)
    return ours_t, hand_t


# -- 2. end to end -----------------------------------------------------------------------


class Stages:
    """Seconds per stage of one run (summed over its batches)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


def timed_batches(batches: Iterator[Any], stages: Stages) -> Iterator[Any]:
    """Adds the time spent waiting for each item of ``batches`` to stage ``read``."""
    while True:
        t0 = time.perf_counter()
        try:
            item = next(batches)
        except StopIteration:
            stages.add("read", time.perf_counter() - t0)
            return
        stages.add("read", time.perf_counter() - t0)
        yield item


def hand_loop_kafka(
    bootstrap: str,
    topic: str,
    partitions: int,
    dsn: str,
    heads: dict[int, int],
    batch: int,
    stages: Stages,
    prefetch: int | None = None,
) -> int:
    """One bulk fetch and one COPY-style upsert per batch, offsets stored with the rows.
    ``prefetch``: the consumer's ``queued.min.messages`` (librdkafka's default without)."""
    from confluent_kafka import Consumer, TopicPartition

    conf = {
        "bootstrap.servers": bootstrap, "group.id": f"hand-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
    }  # fmt: skip
    if prefetch is not None:
        conf["queued.min.messages"] = prefetch
    consumer = Consumer(conf)
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    positions = dict.fromkeys(range(partitions), 0)

    def poll() -> Iterator[list[tuple[int, int, bytes]]]:
        while any(positions[p] < heads[p] for p in positions):
            msgs = consumer.consume(num_messages=batch, timeout=1.0)
            out: list[tuple[int, int, bytes]] = []
            for m in msgs:
                value = m.value()
                if m.error() is None and value is not None:
                    out.append((m.partition() or 0, m.offset() or 0, value))
            if out:
                yield out

    try:
        return run_hand_loop(timed_batches(poll(), stages), positions, topic, dsn, stages)
    finally:
        consumer.close()


def hand_loop_feed(app: App, topic: str, dsn: str, batch: int, stages: Stages) -> int:
    """The same loop reading the embedded log through the backend's change feed."""
    feed = app.change_feed([topic], FeedOptions("hand"))
    since = dict.fromkeys(feed.topic_partitions(), 0)
    positions = {tp.partition: 0 for tp in since}

    def poll() -> Iterator[list[tuple[int, int, bytes]]]:
        chunk: list[tuple[int, int, bytes]] = []
        for change in feed.iter_changes(since, forever=False):
            if change is None or change.metadata is None:
                continue
            chunk.append((change.partition, change.offset, change.metadata.encode()))
            if len(chunk) >= batch:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    try:
        return run_hand_loop(timed_batches(poll(), stages), positions, topic, dsn, stages)
    finally:
        feed.close()


def run_hand_loop(
    batches: Iterator[list[tuple[int, int, bytes]]],
    positions: dict[int, int],
    topic: str,
    dsn: str,
    stages: Stages,
) -> int:
    total = 0
    with psycopg.connect(dsn) as conn:
        conn.execute(report_ddl("hand_cases"))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS hand_offsets (topic text, part int, next_offset bigint, "
            "PRIMARY KEY (topic, part))"
        )
        conn.commit()
        clock = time.perf_counter
        for msgs in batches:
            t0 = clock()
            latest: dict[str, dict[str, Any]] = {}
            for part, offset, raw in msgs:
                stub = orjson.loads(raw)
                latest.pop(stub["document_id"], None)
                latest[stub["document_id"]] = stub
                positions[part] = offset + 1
            total += len(msgs)
            ids = list(latest)
            with conn.cursor() as cur:
                cur.execute("SELECT id, document, deleted FROM docs WHERE id = ANY(%s)", (ids,))
                found = {r[0]: r for r in cur.fetchall()}
                t1 = clock()
                stages.add("fetch", t1 - t0)
                rows = []
                gone = []
                for doc_id in ids:
                    r = found.get(doc_id)
                    if r is None or r[2] or r[1].get("doc_type") != "case":
                        gone.append(doc_id)
                    else:
                        rows.append(hand_row(doc_id, r[1]))
                if gone:
                    cur.execute("DELETE FROM hand_cases WHERE doc_id = ANY(%s)", (gone,))
                cur.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS hand_stage (LIKE hand_cases) ON COMMIT DELETE ROWS"
                )
                with cur.copy(f"COPY hand_stage ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                cur.execute(
                    f"INSERT INTO hand_cases SELECT * FROM hand_stage "
                    f"ON CONFLICT (doc_id, row_num) DO UPDATE SET {UPSERT_SET}"
                )
                t2 = clock()
                stages.add("process", t2 - t1)
                cur.executemany(
                    "INSERT INTO hand_offsets VALUES (%s, %s, %s) ON CONFLICT (topic, part) "
                    "DO UPDATE SET next_offset = excluded.next_offset",
                    [(topic, p, o) for p, o in positions.items()],
                )
            conn.commit()
            stages.add("checkpoint", clock() - t2)
        conn.execute("DROP TABLE hand_cases")
        conn.execute("DROP TABLE hand_offsets")
        conn.commit()
    return total


class PillowStages(PillowListener):
    """Where a pillow's time goes, from its batch reports plus timers around the feed read
    and the checkpoint write (a few calls per batch: no measurable cost)."""

    def __init__(self, stages: Stages) -> None:
        self.stages = stages

    def on_batch(self, pillow: Pillow, report: BatchReport) -> None:
        self.stages.add("fetch", report.fetch_seconds)
        self.stages.add("process", sum(report.processor_seconds.values()))
        self.stages.add("main waits for reader", report.waited)

    def attach(self, pillow: Pillow) -> None:
        pillow.listeners.append(self)
        stages = self.stages
        feed: ChangeFeed = pillow.change_feed
        iter_batches = feed.iter_change_batches

        def timed_iter(since: Any, forever: bool = False) -> Iterator[Any]:
            return timed_batches(iter_batches(since, forever), stages)

        feed.iter_change_batches = timed_iter  # type: ignore[method-assign]
        checkpoints: CheckpointStore = pillow.checkpoints
        commit = checkpoints.commit

        def timed_commit(name: str, offsets: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return commit(name, offsets)
            finally:
                stages.add("checkpoint", time.perf_counter() - t0)

        checkpoints.commit = timed_commit  # type: ignore[method-assign]

    def detach(self, pillow: Pillow) -> None:
        pillow.checkpoints.__dict__.pop("commit", None)


def bench_e2e(
    pg: TempPostgresCluster,
    log_url: str,
    docs: int,
    rounds: int,
    batch: int,
    partitions: int,
    modes: list[str],
) -> dict[str, float]:
    db = pg.create_database(f"bench_{uuid.uuid4().hex[:8]}")
    url, dsn = pg.url(db), pg.dsn(db)
    store = SQLDocumentStore(url, "docs", data_source_name="cases")
    store.create()
    with store.engine.begin() as conn:
        conn.execute(
            store.table.insert(),
            [
                {"id": f"case-{i:07d}", "document": make_doc(i), "version": 1, "deleted": False}
                for i in range(docs)
            ],
        )
    topic = f"cases-{uuid.uuid4().hex[:6]}"
    app = App(log_url, url)
    app.backend.admin().create_topic(topic, partitions)
    app.publisher().publish_many(
        (topic, ChangeMeta(f"case-{i:07d}", "sql", "cases", document_type="case"))
        for i in range(docs)
    )
    app.publisher().flush()
    app.document_stores.register(store)
    feed = app.change_feed([topic])
    heads = {tp.partition: off for tp, off in feed.latest_offsets().items()}
    feed.close()
    assert sum(heads.values()) == docs, heads
    kind = log_url.split("://")[0]
    print(f"\nend to end: {docs} stubs in {partitions} partitions on {kind}")
    stages: dict[str, list[Stages]] = {}
    cpu: dict[str, list[float]] = {}

    def ours(pipelined: bool) -> Callable[[], float]:
        label = "ours, pipelined" if pipelined else "ours, sequential"

        def run() -> float:
            name = f"bench-{uuid.uuid4().hex[:8]}"
            proc = ReportTableProcessor(SPEC, url)
            proc.reset()
            pillow = app.constructed_pillow(
                name, [topic], [proc], batch_size=batch, max_wait=5.0, pipeline=pipelined
            )
            assert pillow.pipelined is pipelined
            timers = Stages()
            watch = PillowStages(timers)
            watch.attach(pillow)
            c0 = time.process_time()
            t0 = time.perf_counter()
            read = pillow.run(forever=False)
            elapsed = time.perf_counter() - t0
            cpu.setdefault(label, []).append(time.process_time() - c0)
            watch.detach(pillow)
            stages.setdefault(label, []).append(timers)
            assert read == docs and proc.count_rows() == docs, (read, proc.count_rows())
            pillow.change_feed.close()
            proc.close()
            return elapsed

        return run

    def hand(label: str, prefetch: int | None = None) -> Callable[[], float]:
        def run() -> float:
            timers = Stages()
            c0 = time.process_time()
            t0 = time.perf_counter()
            if log_url.startswith("kafka://"):
                read = hand_loop_kafka(
                    log_url.removeprefix("kafka://"), topic, partitions, dsn, heads, batch,
                    timers, prefetch,
                )  # fmt: skip
            else:
                read = hand_loop_feed(app, topic, dsn, batch, timers)
            elapsed = time.perf_counter() - t0
            cpu.setdefault(label, []).append(time.process_time() - c0)
            stages.setdefault(label, []).append(timers)
            assert read == docs, read
            return elapsed

        return run

    contenders: dict[str, Callable[[], float]] = {}
    if "on" in modes:
        contenders["ours, pipelined"] = ours(True)
    if "off" in modes:
        contenders["ours, sequential"] = ours(False)
    contenders["hand-written"] = hand("hand-written")
    if log_url.startswith("kafka://"):
        # the same loop with the prefetch bound our consumer uses: what the rest is worth
        contenders[HAND_BOUNDED] = hand(HAND_BOUNDED, CONSUMER_DEFAULTS["queued.min.messages"])
    times = interleave(rounds, contenders)
    stages = {k: v[1:] for k, v in stages.items()}  # drop the warm-up round
    cpu = {k: v[1:] for k, v in cpu.items()}
    app.close()
    store.close()
    print(f"\nend to end: log -> bulk fetch from PostgreSQL -> report table, batches of {batch}")
    print(f"  load average at the end: {os.getloadavg()[0]:.2f} (1 min)")
    ratios: dict[str, float] = {}
    for label, ts in times.items():
        med = statistics.median(ts)
        print(
            f"  {label:22} median {med:7.3f}s {docs / med:10,.0f} docs/s  "
            f"CPU {statistics.median(cpu[label]):.3f}s  rounds {[round(t, 3) for t in ts]}"
        )
    for reference in ("hand-written", HAND_BOUNDED):
        if reference not in times:
            continue
        hand_t = times[reference]
        for label, ts in times.items():
            if not label.startswith("ours"):
                continue
            ratio = statistics.median(hand_t) / statistics.median(ts)
            per_round = statistics.median(h / t for h, t in zip(hand_t, ts, strict=True))
            suffix = "" if reference == "hand-written" else " vs bounded"
            ratios[f"e2e {kind} {label.removeprefix('ours, ')}{suffix}"] = ratio
            print(
                f"  ratio {label} / {reference}: {ratio:.2f}x (median of the rounds' ratios "
                f"{per_round:.2f}x)"
            )
    if "ours, pipelined" in times and "ours, sequential" in times:
        p, q = times["ours, pipelined"], times["ours, sequential"]
        print(
            f"  ratio pipelined / sequential: {statistics.median(q) / statistics.median(p):.2f}x"
            f" (rounds' ratios {statistics.median(b / a for a, b in zip(p, q, strict=True)):.2f}x)"
        )
    print("  where the time goes (median seconds per run; pipelined, read and fetch run on the")
    print("  reader thread while process and checkpoint run on the main thread):")
    names = ["read", "fetch", "process", "checkpoint", "main waits for reader"]
    print("    " + " " * 22 + "".join(f"{n:>12}" for n in names[:4]) + "  main waits")
    for label, runs in stages.items():
        cells = [statistics.median(r.seconds.get(n, 0.0) for r in runs) for n in names]
        print(f"    {label:22}" + "".join(f"{c:12.3f}" for c in cells))
    return ratios


def interleave(rounds: int, contenders: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """One warm-up run each, then ``rounds`` rounds; each round runs every contender once,
    in an order rotated from round to round."""
    for run in contenders.values():
        run()
    labels = list(contenders)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(rounds):
        order = labels[r % len(labels) :] + labels[: r % len(labels)]
        for label in order:
            times[label].append(contenders[label]())
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("upsert", "e2e"))
    parser.add_argument("--docs", type=int, default=30000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument(
        "--pipeline", choices=("both", "on", "off"), default="both",
        help="end to end: run ours pipelined, sequential, or both (default) in each round",
    )  # fmt: skip
    parser.add_argument(
        "--log", default="kafka",
        help="kafka (start a noida-db broker), a kafka://host:port URL, or sqlite (a temp file)",
    )  # fmt: skip
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-reports-"))
    ratios: dict[str, float] = {}
    modes = ["on", "off"] if args.pipeline == "both" else [args.pipeline]
    try:
        with TempPostgresCluster(wal_level="replica", output_plugins=()) as pg:
            if args.only in (None, "upsert"):
                ratios["upsert"] = bench_upsert(pg, args.docs, args.rounds, args.batch)
            if args.only in (None, "e2e"):
                if args.log == "kafka":
                    with NoidaServer("kafka") as broker:
                        log_url = broker.kafka_url
                        ratios.update(
                            bench_e2e(
                                pg, log_url, args.docs, args.rounds, args.batch, args.partitions,
                                modes,
                            )
                        )  # fmt: skip
                else:
                    log_url = f"sqlite:///{tmp / 'log.db'}" if args.log == "sqlite" else args.log
                    ratios.update(
                        bench_e2e(
                            pg, log_url, args.docs, args.rounds, args.batch, args.partitions, modes
                        )
                    )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        "\nsummary (ours / hand-written): " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
    )


if __name__ == "__main__":
    main()
