"""Report tables at CommCare HQ's scale: one pillow holding 1, 100 and 1,000 data sources.

1. ``throughput``: the same documents (``--docs``, spread over ``--domains`` domains) through
   one pillow whose `ReportTablesProcessor` holds N data sources, for each N of
   ``--sources``: with N=1 one data source takes every document; with N data sources, data
   source k takes the domains d with d % N == k (an ``equals`` on ``domain`` at N = domains,
   an ``in`` list below). Every run writes the same rows, spread over N tables. Stubs on the
   embedded log, documents fetched from PostgreSQL (SQLDocumentStore), report tables and
   checkpoints in PostgreSQL. Each run is a child process of its own (fresh report
   database), so its peak memory (``ru_maxrss``) and bootstrap time (creating N tables and
   recording their definitions) are its own. Rounds rotate the N so machine noise hits all.
   ``--old N,..`` adds a pillow of N plain `ReportTableProcessor`s (one per data source, the
   shape before `ReportTablesProcessor`) for comparison, on ``--old-docs`` documents.
2. ``latency``: a pillow with the largest N follows the log while this process publishes
   ``--rate`` changes/s of existing documents (for ``--seconds``); after a third of the time a
   data source over every document is added to the pillow's `SQLDataSourceProvider` and
   `changefeed reports reload` is requested, so its table is back-filled next to the running
   pillow. A processor after the report tables records publish-to-processed latency; p50,
   p99 and max are printed before, during and after the back-fill.

    python bench/report_scale.py [--docs 100000] [--domains 1000] [--sources 1,100,1000]
        [--rounds 1] [--old 1,20,100] [--old-docs 4000] [--rate 1000] [--seconds 30]
        [--batch-size N] [--only throughput|latency]

``--batch-size`` gives the pillows a ``batch_size`` (the same for every N). Without it the
pillow takes its default (1,000) or what its processor asks for (`batch_size_hint`:
`ReportTablesProcessor` asks for 5 changes per data source): with many data sources a batch
costs about one statement per table it touches, so fuller batches make 1,000 data sources
cheap. The batch size each run used is printed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from changefeed.app import App
from changefeed.change import Change, ChangeMeta
from changefeed.processors import BulkProcessor, ChangeFailure, Processor
from changefeed.processors.reports import (
    ReportTableProcessor,
    ReportTablesProcessor,
    SQLDataSourceProvider,
)
from changefeed.processors.reports.states import StateStore
from changefeed.rebuild import Backfiller
from changefeed.stores.sql import SQLDocumentStore
from changefeed.testing.postgres import TempPostgresCluster

TOPIC = "case"
COLUMNS: list[dict[str, Any]] = [
    {"name": "owner_id", "index": True},
    {"name": "status"},
    {"name": "priority", "type": "integer"},
    {"name": "score", "type": "float"},
    {"name": "opened_on", "type": "date"},
    {
        "name": "city",
        "expression": {"type": "property_path", "property_path": ["address", "city"]},
    },
]


def make_doc(i: int, domains: int) -> dict[str, Any]:
    return {
        "doc_type": "case",
        "domain": f"domain-{i % domains:04d}",
        "owner_id": f"owner-{i % 97}",
        "status": ("open", "closed", "pending")[i % 3],
        "priority": str(i % 5),
        "score": (i * 7) % 1000 / 10,
        "opened_on": f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}",
        "address": {"city": f"city-{i % 50}"},
        "notes": "x" * 200,
    }


def data_sources(n: int, domains: int) -> list[dict[str, Any]]:
    """N data sources splitting the domains between them (one over all when N is 1)."""
    if n == 1:
        return [
            {
                "name": "all-cases",
                "table": "report_all_cases",
                "filter": {"type": "equals", "property_name": "doc_type", "value": "case"},
                "columns": COLUMNS,
            }
        ]
    out = []
    for k in range(n):
        mine = [f"domain-{d:04d}" for d in range(domains) if d % n == k]
        clause: dict[str, Any] = (
            {"type": "equals", "property_name": "domain", "value": mine[0]}
            if len(mine) == 1
            else {"type": "in", "property_name": "domain", "values": mine}
        )
        out.append(
            {
                "name": f"cases-{k:04d}",
                "table": f"report_cases_{k:04d}",
                "filter": {
                    "type": "and",
                    "filters": [
                        {"type": "equals", "property_name": "doc_type", "value": "case"},
                        clause,
                    ],
                },
                "columns": COLUMNS,
            }
        )
    return out


def fill(
    pg: TempPostgresCluster, log_url: str, docs: int, domains: int, publish: bool = True
) -> str:
    """The documents in PostgreSQL and (``publish``) one stub per document on the log; the
    store's URL."""
    url = pg.url(pg.create_database(f"docs_{uuid.uuid4().hex[:8]}"))
    store = SQLDocumentStore(url, "docs", data_source_name="cases")
    store.create()
    with store.engine.begin() as conn:
        for start in range(0, docs, 10_000):
            conn.execute(
                store.table.insert(),
                [
                    {
                        "id": f"case-{i:07d}",
                        "document": make_doc(i, domains),
                        "version": 1,
                        "deleted": False,
                    }
                    for i in range(start, min(docs, start + 10_000))
                ],
            )
    store.close()
    app = App(log_url, f"sqlite:///{Path(tempfile.mkdtemp()) / 'fill-state.db'}")
    app.backend.admin().create_topic(TOPIC, 4)
    if not publish:
        app.close()
        return url
    app.publisher().publish_many(
        (TOPIC, ChangeMeta(f"case-{i:07d}", "sql", "cases", document_type="case"))
        for i in range(docs)
    )
    app.publisher().flush()
    app.close()
    return url


def _throughput_child(
    pg_url: str, state_url: str, log_url: str, docs_url: str, n: int, domains: int, docs: int,
    old: bool, batch: int | None, out: Any,
) -> None:  # fmt: skip
    """One run, in a process of its own: bootstrap N data sources, then read every stub."""
    specs = data_sources(n, domains)
    app = App(log_url, state_url)
    store = SQLDocumentStore(docs_url, "docs", data_source_name="cases")
    app.document_stores.register(store)
    t0 = time.perf_counter()
    processors: list[Processor]
    if old:
        processors = [ReportTableProcessor(spec, pg_url) for spec in specs]
    else:
        processors = [ReportTablesProcessor(specs, pg_url)]
    for p in processors:
        p.bootstrap()
    bootstrap = time.perf_counter() - t0
    sizing = {} if batch is None else {"batch_size": batch}
    pillow = app.constructed_pillow(f"bench-{uuid.uuid4().hex[:8]}", [TOPIC], processors, **sizing)
    batch_size = pillow.batching.batch_size
    t0 = time.perf_counter()
    read = pillow.run(forever=False)
    elapsed = time.perf_counter() - t0
    maxrss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = 0
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        for spec in specs:
            rows += conn.execute(sa.text(f"SELECT count(*) FROM {spec['table']}")).scalar_one()
    engine.dispose()
    for p in processors:
        p.close()
    app.close()
    out.send({"read": read, "seconds": elapsed, "bootstrap": bootstrap, "rss": maxrss_mib,
              "rows": rows, "batch_size": batch_size})  # fmt: skip
    out.close()


def run_child(*args: Any) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_throughput_child, args=(*args, child))
    proc.start()
    child.close()
    result: dict[str, Any] = parent.recv()
    proc.join()
    return result


def bench_throughput(
    pg: TempPostgresCluster, tmp: Path, docs: int, domains: int, sources: Sequence[int],
    rounds: int, old: Sequence[int], old_docs: int, batch: int | None,
) -> None:  # fmt: skip
    log_url = f"sqlite:///{tmp / 'log.db'}"
    docs_url = fill(pg, log_url, docs, domains)
    results: dict[int, list[dict[str, Any]]] = {n: [] for n in sources}
    for r in range(rounds):
        order = list(sources)[r % len(sources) :] + list(sources)[: r % len(sources)]
        for n in order:
            db = pg.create_database(f"reports_{uuid.uuid4().hex[:8]}")
            state = f"sqlite:///{tmp / f'state-{uuid.uuid4().hex[:6]}.db'}"
            res = run_child(pg.url(db), state, log_url, docs_url, n, domains, docs, False, batch)
            assert res["read"] == docs and res["rows"] == docs, res
            results[n].append(res)
            print(
                f"  round {r + 1}: {n:5d} data sources: {docs / res['seconds']:9,.0f} docs/s  "
                f"bootstrap {res['bootstrap']:6.2f}s  peak RSS {res['rss']:6.0f} MiB  "
                f"batch_size {res['batch_size']}",
                flush=True,
            )
    print(
        f"\nthroughput: {docs:,} documents over {domains} domains, one pillow, "
        f"batch_size {batch or 'not given'} (medians)"
    )
    base = statistics.median(docs / x["seconds"] for x in results[sources[0]])
    for n in sources:
        rate = statistics.median(docs / x["seconds"] for x in results[n])
        boot = statistics.median(x["bootstrap"] for x in results[n])
        rss = statistics.median(x["rss"] for x in results[n])
        print(
            f"  {n:5d} data sources: {rate:9,.0f} docs/s  ({rate / base:.2f}x of {sources[0]})  "
            f"bootstrap {boot:6.2f}s  peak RSS {rss:5.0f} MiB"
        )
    if old:
        log_old = f"sqlite:///{tmp / 'log-old.db'}"
        docs_old = fill(pg, log_old, old_docs, domains)
        print(f"\nbefore: N plain ReportTableProcessors, {old_docs:,} documents")
        for n in old:
            for new in (False, True):
                db = pg.create_database(f"reports_{uuid.uuid4().hex[:8]}")
                state = f"sqlite:///{tmp / f'state-{uuid.uuid4().hex[:6]}.db'}"
                res = run_child(
                    pg.url(db), state, log_old, docs_old, n, domains, old_docs, not new, batch
                )
                label = "ReportTablesProcessor " if new else "N ReportTableProcessors"
                print(f"  {n:5d} data sources, {label}: {old_docs / res['seconds']:9,.0f} docs/s")


class LatencyRecorder(BulkProcessor):
    """Runs after the report tables: now - publish_timestamp per change, with its time."""

    needs_documents = False

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []

    @property
    def name(self) -> str:
        return "latency"

    def process_changes(self, changes: Sequence[Change]) -> list[ChangeFailure]:
        now = time.time()
        for change in changes:
            meta = change.metadata
            if meta is not None and meta.publish_timestamp is not None:
                self.samples.append((now, now - meta.publish_timestamp))
        return []


def percentiles(values: list[float]) -> str:
    if not values:
        return "no samples"
    values = sorted(values)
    p = lambda q: values[min(len(values) - 1, int(q * len(values)))] * 1000  # noqa: E731
    return f"n={len(values):6d}  p50 {p(0.5):7.1f} ms  p99 {p(0.99):7.1f} ms  max {values[-1] * 1000:7.1f} ms"


def bench_latency(
    pg: TempPostgresCluster, tmp: Path, docs: int, domains: int, n: int, rate: int,
    seconds: float,
) -> None:  # fmt: skip
    log_url = f"sqlite:///{tmp / 'log-latency.db'}"
    docs_url = fill(pg, log_url, docs, domains, publish=False)
    reports_url = pg.url(pg.create_database(f"reports_{uuid.uuid4().hex[:8]}"))
    provider = SQLDataSourceProvider(reports_url)
    t0 = time.perf_counter()
    for spec in data_sources(n, domains):
        provider.add(spec)
    print(
        f"\nlatency: {n} data sources in a table provider (added in {time.perf_counter() - t0:.1f}s)"
    )
    app = App(log_url, f"sqlite:///{tmp / 'state-latency.db'}")
    store = SQLDocumentStore(docs_url, "docs", data_source_name="cases")
    app.document_stores.register(store)
    recorders: list[LatencyRecorder] = []

    def factory(app: App) -> Any:
        recorder = LatencyRecorder()
        recorders.append(recorder)
        processor = ReportTablesProcessor(SQLDataSourceProvider(reports_url), reports_url)
        return app.constructed_pillow(
            "latency", [TOPIC], [processor, recorder], reindex_stores=[store]
        )

    app.add_pillow("latency", factory)
    pillow = app.get_pillow("latency")
    recorder = recorders[0]
    t0 = time.perf_counter()
    for p in pillow.processors:
        p.bootstrap()
    print(f"  bootstrap of {n} data sources: {time.perf_counter() - t0:.1f}s")
    backfiller = Backfiller(app, pillow)
    runner = threading.Thread(target=pillow.run, kwargs={"forever": True}, daemon=True)
    runner.start()
    backfiller.start()
    publisher = app.publisher()
    tick = 0.01
    per_tick = max(1, int(rate * tick))
    start = time.perf_counter()
    added_at: float | None = None
    filled_at: float | None = None
    i = 0
    while (elapsed := time.perf_counter() - start) < seconds:
        if added_at is None and elapsed >= seconds / 3:
            provider.add(
                {**data_sources(1, domains)[0], "name": "added-late", "table": "report_added"}
            )
            added_at = time.time()
            StateStore(provider.engine).request_reload()
        publisher.publish_many(
            (TOPIC, ChangeMeta(f"case-{(i + k) * 7919 % docs:07d}", "sql", "cases",
                               document_type="case"))
            for k in range(per_tick)
        )  # fmt: skip
        i += per_tick
        if added_at is not None and filled_at is None and backfiller.results:
            filled_at = time.time()
        time.sleep(max(0.0, start + (i / rate) - time.perf_counter()))
    time.sleep(2.0)
    pillow.stop()
    runner.join(30)
    backfiller.stop()
    if filled_at is None and backfiller.results:
        filled_at = time.time()
    samples = recorder.samples
    added = added_at or float("inf")
    filled = filled_at or float("inf")
    print(f"  {i:,} changes published at {rate}/s over {seconds:.0f}s")
    print(f"  before the add:      {percentiles([lat for t, lat in samples if t < added])}")
    print(
        f"  during the back-fill: {percentiles([lat for t, lat in samples if added <= t < filled])}"
    )
    print(f"  after it:            {percentiles([lat for t, lat in samples if t >= filled])}")
    print(f"  all:                 {percentiles([lat for _, lat in samples])}")
    if filled_at is not None and added_at is not None:
        print(f"  back-fill of {docs:,} documents took {filled_at - added_at:.1f}s")
    else:
        print("  the back-fill did not finish in time")
    print(f"  back-fill results: {[r.describe() for r in backfiller.results]}")
    store.close()
    app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("throughput", "latency"))
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--domains", type=int, default=1000)
    parser.add_argument("--sources", default="1,100,1000")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--old", default="", help="N,..: also N plain ReportTableProcessors")
    parser.add_argument("--old-docs", type=int, default=4000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--batch-size", type=int, default=None,
        help="the pillows' batch_size (default: none given, the pillow's choice)",
    )  # fmt: skip
    args = parser.parse_args()
    sources = [int(x) for x in args.sources.split(",")]
    old = [int(x) for x in args.old.split(",") if x]
    tmp = Path(tempfile.mkdtemp(prefix="bench-report-scale-"))
    try:
        with TempPostgresCluster(wal_level="replica", output_plugins=()) as pg:
            if args.only in (None, "throughput"):
                bench_throughput(
                    pg, tmp, args.docs, args.domains, sources, args.rounds, old, args.old_docs,
                    args.batch_size,
                )  # fmt: skip
            if args.only in (None, "latency"):
                bench_latency(
                    pg, tmp, args.docs, args.domains, max(sources), args.rate, args.seconds
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
