"""Benchmark: `changefeed reindex` from a PostgreSQL `SQLDocumentStore`, side by side with
what a user would write by hand, in one run.

1. ``postgres``: a report table. Ours is `Reindexer(pillow).run(resume=False, reset=True)`
   for a pillow with one `ReportTableProcessor` (chunks of 1000, progress saved per chunk),
   pipelined (the default: the next chunk is read in a thread while the current one is
   written) and, to show what the pipeline adds, with ``pipeline=False``. The hand-written
   loop reads the documents with a server-side cursor in id order, 1000 at a time, COPYs
   each chunk into a temp table and upserts it (``INSERT .. SELECT .. ON CONFLICT``), one
   transaction per chunk.
2. ``elastic``: an Elasticsearch index (noida-db's Elasticsearch API). Ours is the same
   reindex with one `ElasticProcessor`; the comparison is the official client's
   ``helpers.parallel_bulk`` (4 threads, chunks of 1000) fed from the same store reads
   (``store.iter_documents()``), each document's body stripped of the metadata fields
   Elasticsearch refuses, as the processor does.
3. ``memory``: peak RSS (``VmHWM``) of a child process that runs the report-table reindex
   of 100k documents, then of another over 1M (``--memory-docs``); the target is the larger
   within 10 % of the smaller.

Rounds rotate the order of the contenders after a warm-up round of each; prints medians,
the median of each round's own ratio (contenders of a round run back to back), and CPU
seconds per document, this process plus the server's (PostgreSQL's postmaster and its
backends, or the noida-db process), which the machine's load moves much less than wall
time. Starts its own PostgreSQL cluster and noida-db; the log is an empty embedded one.
Shares the documents, report spec and hand-written row code with bench/report_tables.py.

    python bench/reindex.py [--only postgres,elastic,memory] [--docs 100000] [--rounds 5]
        [--chunk 1000] [--memory-docs 100000,1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psycopg
from elasticsearch import Elasticsearch, helpers
from report_tables import COLUMNS, SPEC, UPSERT_SET, hand_row, make_doc, report_ddl

from changefeed.app import App
from changefeed.processors.elastic import METADATA_FIELDS, ElasticProcessor
from changefeed.processors.reports import ReportTableProcessor
from changefeed.reindex import Reindexer
from changefeed.stores.sql import SQLDocumentStore
from changefeed.testing.postgres import TempPostgresCluster
from changefeed.testing.servers import NoidaServer

TICKS = os.sysconf("SC_CLK_TCK")


def fill_store(dsn: str, table: str, docs: int) -> None:
    """``docs`` documents ``case-0000000``... in a fresh store table, COPYed (a million
    rows in seconds rather than minutes)."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            f"CREATE TABLE {table} (id varchar(255) PRIMARY KEY, document jsonb, "
            "version bigint NOT NULL, deleted boolean NOT NULL)"
        )
        with conn.cursor() as cur, cur.copy(f"COPY {table} FROM STDIN") as copy:
            for i in range(docs):
                copy.write_row((f"case-{i:07d}", orjson.dumps(make_doc(i)).decode(), 1, False))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"VACUUM ANALYZE {table}")


def hand_reindex(dsn: str, table: str, chunk: int) -> int:
    """Server-side cursor in id order, chunks of ``chunk`` -> COPY upsert."""
    total = 0
    with psycopg.connect(dsn) as read, psycopg.connect(dsn) as write:
        write.execute("DROP TABLE IF EXISTS hand_cases")
        write.execute(report_ddl("hand_cases"))
        write.execute("CREATE TEMP TABLE hand_stage (LIKE hand_cases) ON COMMIT DELETE ROWS")
        write.commit()
        with read.cursor(name="scan") as scan:
            scan.itersize = chunk
            scan.execute(f"SELECT id, document FROM {table} WHERE NOT deleted ORDER BY id")
            while rows := scan.fetchmany(chunk):
                with write.cursor() as cur:
                    with cur.copy(f"COPY hand_stage ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                        for doc_id, doc in rows:
                            if doc.get("doc_type") == "case":
                                copy.write_row(hand_row(doc_id, doc))
                    cur.execute(
                        "INSERT INTO hand_cases SELECT * FROM hand_stage "
                        f"ON CONFLICT (doc_id, row_num) DO UPDATE SET {UPSERT_SET}"
                    )
                write.commit()
                total += len(rows)
        count = write.execute("SELECT count(*) FROM hand_cases").fetchone()
        assert count is not None and count[0] == total, (count, total)
    return total


# -- measuring ---------------------------------------------------------------------------


def _proc_cpu(pid: int | str) -> tuple[int, float, float]:
    """(parent pid, own CPU seconds, CPU seconds of reaped children) from /proc."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return int(fields[1]), (utime + stime) / TICKS, (cutime + cstime) / TICKS


def server_cpu(pid: int) -> float:
    """CPU seconds of a server process, its exited children and its live ones (PostgreSQL's
    backends are children of the postmaster). A backend that exited but is not yet reaped
    is counted in a later reading: rounds rotate, so that falls on every contender alike."""
    _, own, reaped = _proc_cpu(pid)
    total = own + reaped
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            parent, child, child_reaped = _proc_cpu(entry)
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid:
            total += child + child_reaped
    return total


def postmaster_pid(pg: TempPostgresCluster) -> int:
    assert pg.base is not None
    return int((pg.base / "data" / "postmaster.pid").read_text().split()[0])


Sample = tuple[float, float, float]
"""(wall seconds, this process's CPU seconds, the server's CPU seconds) of one run."""


def measure(run: Callable[[], None], server_pid: int) -> Sample:
    time.sleep(0.2)  # let the server reap the previous run's backends (see server_cpu)
    s0, c0, t0 = server_cpu(server_pid), time.process_time(), time.perf_counter()
    run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    time.sleep(0.2)
    return wall, cpu, server_cpu(server_pid) - s0


def rotate(
    rounds: int, contenders: dict[str, Callable[[], None]], server_pid: int
) -> dict[str, list[Sample]]:
    """A warm-up run of each, then ``rounds`` rounds, each in a rotated order."""
    for run in contenders.values():
        run()
    names = list(contenders)
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            samples[name].append(measure(contenders[name], server_pid))
        print(
            f"  round {r + 1}: "
            + ", ".join(f"{n} {samples[n][-1][0]:.3f}s" for n in names)
            + f"  (load {os.getloadavg()[0]:.2f})",
            flush=True,
        )
    return samples


def summarize(title: str, docs: int, samples: dict[str, list[Sample]], base: str) -> dict[str, Any]:
    """Print medians and ratios against ``base``; returns them for the final summary."""
    print(f"\n{title}")
    print(
        f"  {'':28s} {'median':>8s} {'docs/s':>9s} {'x ' + base:>12s} {'CPU µs/doc':>11s} "
        f"{'(ours+server)':>14s}  rounds (s)"
    )
    out: dict[str, Any] = {}
    base_samples = samples[base]
    for name, ss in samples.items():
        wall = statistics.median(s[0] for s in ss)
        # per round: base time / this time = this contender's throughput relative to base
        round_ratio = statistics.median(b[0] / s[0] for s, b in zip(ss, base_samples, strict=True))
        cpu = statistics.median((s[1] + s[2]) / docs * 1e6 for s in ss)
        split = (
            f"{statistics.median(s[1] for s in ss) / docs * 1e6:.1f}+"
            f"{statistics.median(s[2] for s in ss) / docs * 1e6:.1f}"
        )
        print(
            f"  {name:28s} {wall:7.3f}s {docs / wall:9,.0f} {round_ratio:11.2f}x {cpu:11.1f} "
            f"{split:>14s}  {', '.join(f'{s[0]:.3f}' for s in ss)}"
        )
        out[name] = {"wall": wall, "round_ratio": round_ratio, "cpu_us_per_doc": cpu}
    return out


# -- 1. report table ---------------------------------------------------------------------


def bench_postgres(
    app: App, store: SQLDocumentStore, url: str, dsn: str, args: Any, pid: int
) -> dict[str, Any]:
    topic = f"cases-{uuid.uuid4().hex[:6]}"
    app.backend.admin().create_topic(topic, 1)

    def ours(pipeline: bool) -> Callable[[], None]:
        def run() -> None:
            proc = ReportTableProcessor(SPEC, url)
            pillow = app.constructed_pillow(f"bench-{uuid.uuid4().hex[:8]}", [topic], [proc])
            reindexer = Reindexer(pillow, chunk_size=args.chunk, pipeline=pipeline)
            result = reindexer.run(resume=False, reset=True)
            assert proc.count_rows() == args.docs, (proc.count_rows(), result)
            pillow.change_feed.close()
            proc.close()

        return run

    def hand() -> None:
        assert hand_reindex(dsn, store.table.name, args.chunk) == args.docs

    print(f"\n[postgres] {args.docs:,} documents -> report table, chunks of {args.chunk}")
    samples = rotate(
        args.rounds,
        {"ours": ours(True), "ours, pipeline=False": ours(False), "hand-written": hand},
        pid,
    )
    return summarize(
        f"reindex of a report table from PostgreSQL, {args.docs:,} documents",
        args.docs,
        samples,
        "hand-written",
    )


# -- 2. Elasticsearch --------------------------------------------------------------------


def bench_elastic(app: App, store: SQLDocumentStore, args: Any) -> dict[str, Any]:
    topic = f"cases-{uuid.uuid4().hex[:6]}"
    app.backend.admin().create_topic(topic, 1)
    with NoidaServer("elasticsearch") as noida:
        assert noida.proc is not None
        es = Elasticsearch(noida.elasticsearch_url, request_timeout=120)

        def check(index: str) -> None:
            es.indices.refresh(index=index)
            assert es.count(index=index)["count"] == args.docs
            es.indices.delete(index=index)

        def ours(pipeline: bool) -> Callable[[], None]:
            def run() -> None:
                alias = f"ours-{uuid.uuid4().hex[:8]}"
                proc = ElasticProcessor(noida.elasticsearch_url, alias, chunk_size=args.chunk)
                pillow = app.constructed_pillow(f"bench-{alias}", [topic], [proc])
                Reindexer(pillow, chunk_size=args.chunk, pipeline=pipeline).run(
                    resume=False, reset=True
                )
                pillow.change_feed.close()
                check(proc.index)
                proc.close()

            return run

        def parallel_bulk() -> None:
            index = f"helper-{uuid.uuid4().hex[:8]}"
            es.indices.create(index=index)
            actions = (
                {
                    "_index": index,
                    "_id": doc_id,
                    "_source": {k: v for k, v in doc.items() if k not in METADATA_FIELDS},
                }
                for doc_id, doc in store.iter_documents(args.chunk)
            )
            done = 0
            for ok, item in helpers.parallel_bulk(es, actions, chunk_size=args.chunk):
                assert ok, item
                done += 1
            assert done == args.docs
            check(index)

        print(f"\n[elastic] {args.docs:,} documents -> Elasticsearch API (noida-db)")
        samples = rotate(
            args.rounds,
            {
                "ours": ours(True),
                "ours, pipeline=False": ours(False),
                "helpers.parallel_bulk": parallel_bulk,
            },
            noida.proc.pid,
        )
        es.close()
    return summarize(
        f"reindex into Elasticsearch from PostgreSQL, {args.docs:,} documents",
        args.docs,
        samples,
        "helpers.parallel_bulk",
    )


# -- 3. peak memory ----------------------------------------------------------------------


def child_reindex(url: str, table: str, docs: int, chunk: int) -> None:
    """In a child process: one report-table reindex of ``table``; prints RSS figures."""

    def rss(field: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise LookupError(field)

    with tempfile.TemporaryDirectory(prefix="bench-reindex-child-") as tmp:
        store = SQLDocumentStore(url, table, data_source_name="cases")
        app = App(f"sqlite:///{tmp}/log.db", f"sqlite:///{tmp}/state.db")
        app.document_stores.register(store)
        app.backend.admin().create_topic("cases", 1)
        spec = {**SPEC, "table": f"report_{table}"}
        proc = ReportTableProcessor(spec, url)
        pillow = app.constructed_pillow("memory", ["cases"], [proc])
        before = rss("VmRSS")
        t0 = time.perf_counter()
        Reindexer(pillow, chunk_size=chunk).run(resume=False, reset=True)
        seconds = time.perf_counter() - t0
        assert proc.count_rows() == docs, proc.count_rows()
        print(json.dumps({"before_mb": before, "peak_mb": rss("VmHWM"), "seconds": seconds}))


def bench_memory(pg: TempPostgresCluster, args: Any) -> dict[str, Any]:
    sizes = [int(n) for n in args.memory_docs.split(",")]
    db = pg.create_database(f"mem_{uuid.uuid4().hex[:8]}")
    url, dsn = pg.url(db), pg.dsn(db)
    out: dict[str, Any] = {}
    print(f"\n[memory] peak RSS of a child process reindexing {', '.join(f'{n:,}' for n in sizes)}")
    for n in sizes:
        table = f"docs_{n}"
        t0 = time.perf_counter()
        fill_store(dsn, table, n)
        print(f"  filled {n:,} documents in {time.perf_counter() - t0:.1f}s", flush=True)
        found = subprocess.run(
            [sys.executable, __file__, "--child", url, table, str(n), str(args.chunk)],
            check=True,
            capture_output=True,
            text=True,
        )
        result = json.loads(found.stdout.strip().splitlines()[-1])
        out[str(n)] = result
        print(
            f"  {n:>9,} documents: peak RSS {result['peak_mb']:.1f} MB (RSS {result['before_mb']:.1f} MB "
            f"before the reindex), reindex {result['seconds']:.1f}s, {n / result['seconds']:,.0f} docs/s",
            flush=True,
        )
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE {table}")
            conn.execute(f"DROP TABLE IF EXISTS report_{table}")
    peaks = [out[str(n)]["peak_mb"] for n in sizes]
    print(f"  peak RSS {sizes[-1]:,} / {sizes[0]:,}: {peaks[-1] / peaks[0]:.3f}x (target <= 1.10x)")
    return out


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        url, table, docs, chunk = sys.argv[2:6]
        child_reindex(url, table, int(docs), int(chunk))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="postgres,elastic,memory")
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--memory-docs", default="100000,1000000")
    args = parser.parse_args()
    only = set(args.only.split(","))
    print(f"load average at start: {os.getloadavg()}, {os.cpu_count()} CPUs")
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="bench-reindex-") as tmp,
        TempPostgresCluster(wal_level="replica", output_plugins=()) as pg,
    ):
        results: dict[str, Any] = {}
        if only & {"postgres", "elastic"}:
            db = pg.create_database(f"bench_{uuid.uuid4().hex[:8]}")
            url, dsn = pg.url(db), pg.dsn(db)
            fill_store(dsn, "docs", args.docs)
            store = SQLDocumentStore(url, "docs", data_source_name="cases")
            app = App(f"sqlite:///{tmp}/log.db", url)
            app.document_stores.register(store)
            if "postgres" in only:
                results["postgres"] = bench_postgres(app, store, url, dsn, args, postmaster_pid(pg))
            if "elastic" in only:
                results["elastic"] = bench_elastic(app, store, args)
            app.close()
            store.close()
        if "memory" in only:
            results["memory"] = bench_memory(pg, args)
    print(f"\nload average at end: {os.getloadavg()}; {time.perf_counter() - started:.0f}s in all")
    if "postgres" in results:
        r = results["postgres"]["ours"]
        print(f"report table: ours/hand-written {r['round_ratio']:.2f}x (target >= 0.9x)")
    if "elastic" in results:
        r = results["elastic"]["ours"]
        print(f"Elasticsearch: ours/parallel_bulk {r['round_ratio']:.2f}x (target >= 0.9x)")


if __name__ == "__main__":
    main()
