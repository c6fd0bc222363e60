"""``changefeed verify --all`` against a hand-written compare of the same tables.

100k documents in a `SQLDocumentStore` on PostgreSQL and their report table (5 columns),
with a little drift made by hand (rows deleted, rows edited, rows of deleted documents). Per
round, side by side:

* ours: `changefeed.verify.verify_pillow` over the pillow (chunks of 1000 ids from the
  store, expected rows from the data source config, actual rows by ``doc_id = ANY``, then a
  scan of the table's ids for extra rows);
* hand-written: two server-side cursors, ``SELECT`` both tables ordered by id, a merge join in
  Python with the row computed by hand-written code.

Both must report the same counts (checked, not timed). Rounds alternate; prints medians,
docs checked per second and the ratio ours/hand-written.

    python bench/verify.py [--docs 100000] [--rounds 3] [--chunk-size 1000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg

from changefeed.app import App
from changefeed.change import Change, ChangeMeta
from changefeed.processors.reports import ReportTableProcessor
from changefeed.stores.sql import SQLDocumentStore
from changefeed.testing.postgres import TempPostgresCluster
from changefeed.verify import verify_pillow

SPEC: dict[str, Any] = {
    "name": "cases",
    "table": "report_cases",
    "filter": {"type": "equals", "property_name": "doc_type", "value": "case"},
    "columns": [
        {"name": "owner_id"},
        {"name": "status"},
        {"name": "priority", "type": "integer"},
        {"name": "closed", "type": "boolean"},
        {
            "name": "city",
            "expression": {"type": "property_path", "property_path": ["address", "city"]},
        },
    ],
}


def make_doc(i: int) -> dict[str, Any]:
    return {
        "doc_type": "case" if i % 10 else "other",
        "owner_id": f"owner-{i % 97}",
        "status": ("open", "closed", "pending")[i % 3],
        "priority": i % 5,
        "closed": i % 4 == 0,
        "address": {"city": f"city-{i % 50}"},
        "notes": "x" * 100,
    }


def hand_row(doc_id: str, doc: dict[str, Any]) -> tuple[Any, ...] | None:
    if doc.get("doc_type") != "case":
        return None
    return (
        doc_id, 0, doc.get("owner_id"), doc.get("status"), doc.get("priority"),
        doc.get("closed"), (doc.get("address") or {}).get("city"),
    )  # fmt: skip


def hand_compare(dsn: str) -> tuple[int, int, int, int]:
    """(checked, missing, extra, different): a merge join of both tables ordered by id."""
    checked = missing = extra = different = 0
    with psycopg.connect(dsn) as docs_conn, psycopg.connect(dsn) as rows_conn:
        docs = docs_conn.cursor(name="docs")
        docs.itersize = 5000
        docs.execute("SELECT id, document::text FROM cases WHERE NOT deleted ORDER BY id")
        rows = rows_conn.cursor(name="rows")
        rows.itersize = 5000
        rows.execute(
            "SELECT doc_id, row_num, owner_id, status, priority, closed, city "
            "FROM report_cases ORDER BY doc_id"
        )
        row = next(rows, None)
        for doc_id, text in docs:
            checked += 1
            while row is not None and row[0] < doc_id:
                extra += 1
                checked += 1
                row = next(rows, None)
            want = hand_row(doc_id, orjson.loads(text))
            have = row if row is not None and row[0] == doc_id else None
            if have is not None:
                row = next(rows, None)
            if want is None and have is not None:
                extra += 1
            elif want is not None and have is None:
                missing += 1
            elif want is not None and tuple(have or ()) != want:
                different += 1
        while row is not None:
            extra += 1
            checked += 1
            row = next(rows, None)
    return checked, missing, extra, different


def setup(pg: TempPostgresCluster, docs: int, workdir: Path) -> tuple[App, str]:
    db = pg.create_database("bench_verify")
    url, dsn = pg.url(db), pg.dsn(db)
    store = SQLDocumentStore(url, "cases")
    store.create()
    with (
        psycopg.connect(dsn) as conn,
        conn.cursor() as cur,
        cur.copy("COPY cases (id, document, version, deleted) FROM STDIN") as copy,
    ):
        for i in range(docs):
            copy.write_row((f"case-{i:07d}", orjson.dumps(make_doc(i)).decode(), 1, False))
    proc = ReportTableProcessor(SPEC, url)
    proc.bootstrap()
    batch: list[Change] = []
    for doc_id, doc in store.iter_documents():
        change = Change("bench", 0, len(batch), ChangeMeta(doc_id, "sql", "cases"))
        change.set_document(doc)
        batch.append(change)
        if len(batch) == 1000:
            proc.process_changes(batch)
            batch = []
    if batch:
        proc.process_changes(batch)
    # drift behind the pillow's back: 50 rows gone, 50 edited, 50 documents deleted
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "DELETE FROM report_cases WHERE doc_id IN (SELECT doc_id FROM report_cases ORDER BY doc_id LIMIT 50)"
        )
        conn.execute(
            "UPDATE report_cases SET owner_id = 'x' WHERE doc_id IN (SELECT doc_id FROM report_cases ORDER BY doc_id DESC LIMIT 50)"
        )
        conn.execute("UPDATE cases SET deleted = true, document = NULL WHERE id IN (SELECT doc_id FROM report_cases ORDER BY doc_id LIMIT 50 OFFSET 1000)")  # fmt: skip
    proc.close()
    app = App(f"sqlite:///{workdir / 'log.db'}", f"sqlite:///{workdir / 'state.db'}")
    app.document_stores.register(store)
    app.add_pillow(
        "cases", lambda a: a.constructed_pillow("cases", ["case"], ReportTableProcessor(SPEC, url))
    )
    return app, dsn


def ours(app: App, chunk_size: int) -> tuple[float, tuple[int, int, int, int]]:
    pillow = app.get_pillow("cases")
    started = time.perf_counter()
    result = verify_pillow(pillow, chunk_size=chunk_size)
    seconds = time.perf_counter() - started
    (report,) = result.processors
    for processor in pillow.processors:
        processor.close()
    pillow.change_feed.close()
    return seconds, (report.checked, report.missing, report.extra, report.stale + report.different)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=1000, help="verify --chunk-size")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        TempPostgresCluster(wal_level="replica", output_plugins=()) as pg,
    ):
        print(f"setting up {args.docs} documents and their report table ...")
        app, dsn = setup(pg, args.docs, Path(tmp))
        ours_times: list[float] = []
        hand_times: list[float] = []
        ratios: list[float] = []
        for r in range(args.rounds):
            o_seconds, o_counts = ours(app, args.chunk_size)
            started = time.perf_counter()
            h_counts = hand_compare(dsn)
            h_seconds = time.perf_counter() - started
            # both checked every document; ours counts a drifted document once
            print(
                f"round {r + 1}: ours {o_seconds:.3f}s {o_counts}, "
                f"hand-written {h_seconds:.3f}s {h_counts}"
            )
            if o_counts[1:] != h_counts[1:]:
                raise SystemExit(f"the two compares disagree: {o_counts} vs {h_counts}")
            ours_times.append(o_seconds)
            hand_times.append(h_seconds)
            ratios.append(h_seconds / o_seconds)
        app.close()
    n = args.docs
    o_med, h_med = statistics.median(ours_times), statistics.median(hand_times)
    print(
        f"\nverify --all --chunk-size {args.chunk_size} over {n} documents, "
        f"{args.rounds} alternating rounds"
    )
    print(f"  ours         median {o_med:7.3f}s  {n / o_med:10,.0f} docs checked/s")
    print(f"  hand-written median {h_med:7.3f}s  {n / h_med:10,.0f} docs checked/s")
    print(f"  ratio ours/hand-written (medians): {h_med / o_med:.2f}x")
    print(f"  median of the rounds' own ratios:  {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
