"""What the operator views of many report data sources cost: recording, status, a scrape.

For N data sources and D domains, all of them changed since the last flush (the worst
case): the time of one `ReportUsageRecorder` flush (what the thread next to a pillow does
every 5 s), of reading `reports_status` (``changefeed status``, the dashboard) and of one
Prometheus scrape of `StatusCollector` (report series included). Median of ``--rounds``.
The reports database is a fresh SQLite file unless ``--db URL`` names an empty one (the
bench drops the two tables it fills when done).

    python bench/report_ops.py [--sources 1000] [--domains 1000] [--rounds 5] [--db URL]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from changefeed.app import App
from changefeed.db import make_engine
from changefeed.metrics import StatusCollector
from changefeed.processors.reports import (
    ReportStats,
    ReportTablesProcessor,
    SourceCounters,
    SourceState,
)
from changefeed.processors.reports.states import sources_table
from changefeed.processors.reports.usage import UsageStore, usage_table
from changefeed.report_status import reports_status


def timed(rounds: int, work: Callable[[int], object]) -> float:
    spent = []
    for i in range(rounds):
        started = time.perf_counter()
        work(i)
        spent.append(time.perf_counter() - started)
    return statistics.median(spent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=1000)
    parser.add_argument("--domains", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--db", help="reports database URL (default: a temp SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or f"sqlite:///{Path(tmp) / 'reports.db'}"
        app = App(f"sqlite:///{tmp}/log.db", f"sqlite:///{tmp}/state.db")
        processor = ReportTablesProcessor([], db)
        app.add_pillow("ucr", lambda a: a.constructed_pillow("ucr", ["case"], [processor]))
        app.backend.admin().create_topic("case", 1)
        names = [f"ds-{i:05d}" for i in range(args.sources)]
        processor.states.save([SourceState(n, f"report_{n}") for n in names])
        usage = UsageStore(processor.engine)

        def flush(i: int) -> None:
            one = SourceCounters(10 + i, 1, 0.01, 0)
            stats = ReportStats(
                dict.fromkeys(names, one), {f"d{d}": 0.01 for d in range(args.domains)}
            )
            usage.add("ucr", processor.name, stats.sources, stats.domain_seconds)

        pillow = app.get_pillow("ucr")
        registry = CollectorRegistry()
        registry.register(StatusCollector(app, ["ucr"]))
        flush_s = timed(args.rounds, flush)
        status_s = timed(args.rounds, lambda _: reports_status(pillow))
        scrape_s = timed(args.rounds, lambda _: generate_latest(registry))
        size = len(generate_latest(registry))
        usage_table.drop(processor.engine)
        sources_table.drop(processor.engine)
        processor.close()
        app.close()
    dialect = make_engine(db).dialect.name
    print(
        f"{args.sources} data sources, {args.domains} domains, {dialect}, median of {args.rounds}"
    )
    print(f"  usage flush (every row changed): {flush_s * 1000:.0f} ms")
    print(f"  reports_status (status, dashboard): {status_s * 1000:.0f} ms")
    print(f"  one scrape: {scrape_s * 1000:.0f} ms, {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
