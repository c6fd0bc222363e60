"""Benchmark: `changefeed reindex` of a report table from a PostgreSQL `SQLDocumentStore` vs
a hand-written loop doing the same work, side by side in one run.

* ours: `Reindexer(pillow).run(resume=False, reset=True)` for a pillow with one
  `ReportTableProcessor` whose store is the `SQLDocumentStore` (chunks of 1000, the
  default): the store's ids in order, bulk fetch, processor, progress saved per chunk.
* hand-written: a server-side cursor over the documents in id order, chunks of 1000, each
  COPYed into a temp table and upserted (``INSERT .. SELECT .. ON CONFLICT``), one
  transaction per chunk.

Rounds alternate the two (the first pair is a warm-up); prints medians and the ratio
ours/hand-written. Starts its own PostgreSQL cluster; the log is an empty embedded one.
Shares the documents, report spec and hand-written row code with bench/report_tables.py.

    python bench/reindex.py [--docs 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from typing import Any

import psycopg
from report_tables import (
    COLUMNS,
    SPEC,
    UPSERT_SET,
    alternate,
    hand_row,
    make_doc,
    report,
    report_ddl,
)

from changefeed.app import App
from changefeed.processors.reports import ReportTableProcessor
from changefeed.reindex import Reindexer
from changefeed.stores.sql import SQLDocumentStore
from changefeed.testing.postgres import TempPostgresCluster


def fill_store(store: SQLDocumentStore, docs: int) -> None:
    for start in range(0, docs, 10_000):
        with store.engine.begin() as conn:
            conn.execute(
                store.table.insert(),
                [
                    {"id": f"case-{i:07d}", "document": make_doc(i), "version": 1, "deleted": False}
                    for i in range(start, min(docs, start + 10_000))
                ],
            )


def hand_reindex(dsn: str, chunk: int) -> int:
    """Server-side cursor in id order, chunks of ``chunk`` -> COPY upsert."""
    total = 0
    with psycopg.connect(dsn) as read, psycopg.connect(dsn) as write:
        write.execute("DROP TABLE IF EXISTS hand_cases")
        write.execute(report_ddl("hand_cases"))
        write.execute("CREATE TEMP TABLE hand_stage (LIKE hand_cases) ON COMMIT DELETE ROWS")
        write.commit()
        with read.cursor(name="scan") as scan:
            scan.itersize = chunk
            scan.execute("SELECT id, document FROM docs WHERE NOT deleted ORDER BY id")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=1000)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}, {os.cpu_count()} CPUs")
    with (
        tempfile.TemporaryDirectory(prefix="bench-reindex-") as tmp,
        TempPostgresCluster(wal_level="replica", output_plugins=()) as pg,
    ):
        db = pg.create_database(f"bench_{uuid.uuid4().hex[:8]}")
        url, dsn = pg.url(db), pg.dsn(db)
        store = SQLDocumentStore(url, "docs", data_source_name="cases")
        store.create()
        fill_store(store, args.docs)
        app = App(f"sqlite:///{tmp}/log.db", url)
        app.document_stores.register(store)
        topic = f"cases-{uuid.uuid4().hex[:6]}"
        app.backend.admin().create_topic(topic, 1)
        print(f"{args.docs:,} documents in PostgreSQL, chunks of {args.chunk}")

        def ours() -> float:
            proc = ReportTableProcessor(SPEC, url)
            pillow = app.constructed_pillow(f"bench-{uuid.uuid4().hex[:8]}", [topic], [proc])
            t0 = time.perf_counter()
            result: Any = Reindexer(pillow, chunk_size=args.chunk).run(resume=False, reset=True)
            elapsed = time.perf_counter() - t0
            assert proc.count_rows() == args.docs, (proc.count_rows(), result)
            pillow.change_feed.close()
            proc.close()
            return elapsed

        def hand() -> float:
            t0 = time.perf_counter()
            assert hand_reindex(dsn, args.chunk) == args.docs
            return time.perf_counter() - t0

        ours_t, hand_t = alternate(args.rounds, ours, hand)
        ratio = report(
            f"reindex of a report table from PostgreSQL, {args.docs:,} documents",
            args.docs,
            ours_t,
            hand_t,
        )
        app.close()
        store.close()
    print(f"\nratio {ratio:.2f}x (target >= 0.9x); load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
