"""Outbox relay and PostgreSQL CDC: throughput (stubs/s) and commit-to-log latency.

Starts its own PostgreSQL cluster (``wal_level=logical``, synchronous commits, no fsync) and
publishes into the embedded SQLite log.

* Throughput: N rows are committed first (not timed), then the relay / CDC drains them into
  a fresh log; outbox and CDC runs alternate so both see the same machine noise.
* Latency: an application writes at a steady rate (one transaction per document: insert the
  row, plus the outbox stub for the outbox) while the relay / CDC runs as its own process
  (``changefeed outbox relay`` / ``changefeed cdc run``, default poll interval). Latency is
  the stub's ``publish_timestamp`` (stamped when the publisher writes the batch) minus the
  moment the application's commit returned.

Run: ``python bench/outbox_cdc.py [--rows 20000] [--runs 3] [--rate 1000] [--seconds 10]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import sqlalchemy as sa

from changefeed.backends.local import SQLiteLog
from changefeed.change import ChangeMeta
from changefeed.sources.outbox import Outbox, OutboxRelay
from changefeed.sources.postgres_cdc import CDCTable, PostgresCDC, create_slot, drop_slot
from changefeed.testing.postgres import TempPostgresCluster

TABLE = "CREATE TABLE docs (id text PRIMARY KEY, domain text, version int, body text)"
CDC_TABLES = [CDCTable("docs", document_type="case", domain_column="domain")]
OUTBOX = Outbox()


def stub(doc_id: str) -> ChangeMeta:
    return ChangeMeta(doc_id, "sql", "docs", document_type="case", domain="d1")


def fresh_db(pg: TempPostgresCluster) -> tuple[str, str]:
    """(SQLAlchemy URL, libpq DSN) of a new database with the docs and outbox tables."""
    name = pg.create_database()
    with psycopg.connect(pg.dsn(name), autocommit=True) as conn:
        conn.execute(TABLE)
    OUTBOX.create(pg.url(name))
    return pg.url(name), pg.dsn(name)


def fill(dsn: str, rows: int, outbox: bool) -> None:
    """Commit ``rows`` documents (and outbox stubs) in transactions of 1000."""
    engine = sa.create_engine(dsn.replace("postgresql://", "postgresql+psycopg://"))
    docs = sa.table("docs", sa.column("id"), sa.column("domain"), sa.column("version"))
    for start in range(0, rows, 1000):
        ids = [f"doc{i:08d}" for i in range(start, min(rows, start + 1000))]
        with engine.begin() as conn:
            conn.execute(docs.insert(), [{"id": i, "domain": "d1", "version": 1} for i in ids])
            if outbox:
                OUTBOX.write_many(conn, [stub(i) for i in ids])
    engine.dispose()


def throughput_outbox(pg: TempPostgresCluster, rows: int, tmp: Path) -> float:
    url, dsn = fresh_db(pg)
    fill(dsn, rows, outbox=True)
    log = SQLiteLog(tmp / f"{uuid.uuid4().hex}.db")
    publisher = log.publisher()
    relay = OutboxRelay(url, publisher, batch_size=5000)
    started = time.perf_counter()
    n = relay.run(forever=False)
    elapsed = time.perf_counter() - started
    publisher.close()
    relay.engine.dispose()
    assert n == rows, (n, rows)
    return n / elapsed


def throughput_cdc(pg: TempPostgresCluster, rows: int, tmp: Path, mode: str = "poll") -> float:
    """Rows committed first, then drained by CDC: polling until caught up (``poll``, as
    ``cdc run --once``) or following the slot over the replication protocol (``stream``)."""
    _, dsn = fresh_db(pg)
    slot = f"bench_{uuid.uuid4().hex[:8]}"
    create_slot(dsn, slot)
    try:
        fill(dsn, rows, outbox=False)
        log = SQLiteLog(tmp / f"{uuid.uuid4().hex}.db")
        publisher = log.publisher()
        cdc = PostgresCDC(dsn, slot, CDC_TABLES, publisher, batch_size=5000, mode=mode)
        started = time.perf_counter()
        if mode == "poll":
            cdc.run(forever=False)
        else:
            runner = threading.Thread(target=cdc.run)
            runner.start()
            while cdc.stats.published < rows and runner.is_alive():
                time.sleep(0.005)
        elapsed = time.perf_counter() - started
        if mode != "poll":
            cdc.stop()
            runner.join()
        publisher.close()
    finally:
        drop_slot(dsn, slot)
    assert cdc.stats.published == rows, (cdc.stats.published, rows)
    return rows / elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


WRITERS = 4
"""Application threads sharing the write rate (one connection each), so a slow round trip
on a busy machine does not lower the offered load."""


def steady_writes(
    make_writer: Callable[[], tuple[Callable[[str], None], Callable[[], None]]],
    rate: int,
    seconds: float,
) -> tuple[dict[str, float], float]:
    """Write one document per transaction at ``rate``/s in total, each thread on a fixed
    schedule; returns (commit time per id, achieved rate)."""
    committed: dict[str, float] = {}
    total = int(rate * seconds)
    started = time.perf_counter()
    wall0 = time.time() - started  # perf_counter -> wall clock, as publish timestamps use

    def worker(k: int) -> None:
        write, close = make_writer()
        try:
            for i in range(k, total, WRITERS):
                delay = started + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                doc_id = f"w{i:08d}"
                write(doc_id)
                committed[doc_id] = wall0 + time.perf_counter()
        finally:
            close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return committed, total / (time.perf_counter() - started)


def latency(
    pg: TempPostgresCluster, mode: str, rate: int, seconds: float, tmp: Path
) -> dict[str, float]:
    url, dsn = fresh_db(pg)
    log_path = tmp / f"latency-{mode}.db"
    SQLiteLog(log_path)
    cli = [sys.executable, "-c", "from changefeed.cli import main; main()"]
    base = [*cli, "--log", f"sqlite:///{log_path}"]
    slot = f"lat_{uuid.uuid4().hex[:8]}"
    if mode == "outbox":
        cmd = [*base, "outbox", "relay", "--db", url]
    else:
        create_slot(dsn, slot)
        cmd = [*base, "cdc", "run", "--db", dsn, "--slot", slot, "--table", "docs:id:case:domain"]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)

    def outbox_writer() -> tuple[Callable[[str], None], Callable[[], None]]:
        # Plain SQL with the columns `write_change` fills: a cheaper load generator, so it
        # can offer the full rate on a small, busy machine.
        conn = psycopg.connect(dsn)
        insert_doc = "INSERT INTO docs (id, domain, version) VALUES (%s, 'd1', 1)"
        insert_stub = "INSERT INTO changefeed_outbox (key, payload) VALUES (%s, %s)"

        def write(doc_id: str) -> None:
            with conn.transaction():
                conn.execute(insert_doc, (doc_id,))
                conn.execute(insert_stub, (doc_id, stub(doc_id).encode().decode()))

        return write, conn.close

    def plain_writer() -> tuple[Callable[[str], None], Callable[[], None]]:
        conn = psycopg.connect(dsn)
        insert = "INSERT INTO docs (id, domain, version) VALUES (%s, 'd1', 1)"

        def write(doc_id: str) -> None:
            with conn.transaction():
                conn.execute(insert, (doc_id,))

        return write, conn.close

    try:
        # Measure only once the relay / CDC process runs: a warm-up document must arrive.
        write, close = (outbox_writer if mode == "outbox" else plain_writer)()
        write("warm-up")
        close()
        wait_for_log(log_path, {"warm-up"}, timeout=120)
        committed, achieved = steady_writes(
            outbox_writer if mode == "outbox" else plain_writer, rate, seconds
        )
        published = wait_for_log(log_path, set(committed), timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        if mode == "cdc":
            drop_slot(dsn, slot)
    lat = [(published[i] - t) * 1000 for i, t in committed.items()]
    return {
        "rate": achieved,
        "p50": percentile(lat, 0.50),
        "p99": percentile(lat, 0.99),
        "max": max(lat),
    }


def wait_for_log(path: Path, ids: set[str], timeout: float) -> dict[str, float]:
    """First publish timestamp of every id, once all are in the log."""
    log = SQLiteLog(path)
    seen: dict[str, float] = {}
    positions: dict = {}
    deadline = time.monotonic() + timeout
    while True:
        feed = log.change_feed([t.name for t in log.admin().list_topics()] or ["case"])
        for tp in feed.topic_partitions():
            positions.setdefault(tp, 0)
        for change in feed.iter_changes(positions):
            if change is None or change.metadata is None:
                continue
            positions[change.topic_partition] = change.offset + 1
            ts = change.metadata.publish_timestamp
            if ts is not None:
                seen.setdefault(change.id, ts)
        feed.close()
        if ids <= seen.keys():
            return seen
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(ids - seen.keys())} stubs never reached the log")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    with TempPostgresCluster(settings={"synchronous_commit": "on"}) as pg:
        tmp = Path(tempfile.mkdtemp(prefix="bench-outbox-cdc-"))
        print(f"PostgreSQL cluster on port {pg.port}; {os.cpu_count()} CPUs", flush=True)
        outbox_rates: list[float] = []
        cdc_rates: list[float] = []
        stream_rates: list[float] = []
        for run in range(args.runs):
            outbox_rates.append(throughput_outbox(pg, args.rows, tmp))
            cdc_rates.append(throughput_cdc(pg, args.rows, tmp))
            stream_rates.append(throughput_cdc(pg, args.rows, tmp, mode="stream"))
            print(
                f"run {run + 1}: outbox {outbox_rates[-1]:,.0f} stubs/s, "
                f"cdc poll {cdc_rates[-1]:,.0f} stubs/s, cdc stream {stream_rates[-1]:,.0f} stubs/s",
                flush=True,
            )
        ob = statistics.median(outbox_rates)
        cdc = statistics.median(cdc_rates)
        stream = statistics.median(stream_rates)
        print(f"\nthroughput ({args.rows:,} rows, median of {args.runs}):")
        print(f"  outbox relay      : {ob:>9,.0f} stubs/s  ({ob / 10_000:.1f}x the 10k target)")
        print(f"  cdc (poll, once)  : {cdc:>9,.0f} stubs/s  ({cdc / 10_000:.1f}x the 10k target)")
        print(
            f"  cdc (stream)      : {stream:>9,.0f} stubs/s  ({stream / 10_000:.1f}x the 10k target)"
        )
        print(f"  cdc poll / outbox : {cdc / ob:.2f}; cdc stream / outbox : {stream / ob:.2f}")

        print(f"\ncommit-to-log latency at {args.rate}/s for {args.seconds:.0f}s:")
        for mode in ("outbox", "cdc"):
            r = latency(pg, mode, args.rate, args.seconds, tmp)
            print(
                f"  {mode:<6}: achieved {r['rate']:,.0f} writes/s, p50 {r['p50']:.1f} ms, "
                f"p99 {r['p99']:.1f} ms, max {r['max']:.1f} ms "
                f"(p99 {r['p99'] / 500:.2f}x the 500 ms budget)",
                flush=True,
            )
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
