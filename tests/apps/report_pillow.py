"""A test app with one report pillow: a `ReportTablesProcessor` of one data source per
domain (``cases-a``, ``cases-b``, ``cases-c``), documents in a memory store.

Configured by environment variables so the CLI (in this process or another) builds the
same app: ``REPORT_APP_DIR`` (log and state databases) and ``REPORT_APP_DB`` (the reports
database). `run_with_a_broken_source` runs it so that ``cases-b``'s table is gone and the
data source ends quarantined, as the operator views (status, metrics, dashboard) show it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from changefeed.app import App
from changefeed.change import ChangeMeta
from changefeed.pillow import Pillow
from changefeed.processors.reports import ReportTablesProcessor
from changefeed.report_usage import ReportUsageRecorder
from changefeed.stores.memory import MemoryDocumentStore

PILLOW = "reports"
DOMAINS = ("a", "b", "c")


def source(domain: str) -> dict[str, Any]:
    return {
        "name": f"cases-{domain}",
        "table": f"report_cases_{domain}",
        "filter": {"type": "equals", "property_name": "domain", "value": domain},
        "columns": [{"name": "owner"}, {"name": "age", "type": "integer"}],
    }


def make_app() -> App:
    base = Path(os.environ["REPORT_APP_DIR"])
    reports = os.environ["REPORT_APP_DB"]
    app = App(f"sqlite:///{base / 'log.db'}", f"sqlite:///{base / 'state.db'}")
    app.document_stores.register(MemoryDocumentStore("docs"))

    def pillow(a: App) -> Pillow:
        processor = ReportTablesProcessor([source(d) for d in DOMAINS], reports, poll_interval=3600)
        return a.constructed_pillow(PILLOW, ["cases"], [processor], batch_size=2, max_wait=0.05)

    app.add_pillow(PILLOW, pillow)
    app.backend.admin().create_topic("cases", 1)
    return app


def publish(app: App, doc_id: str, domain: str) -> None:
    store = app.document_stores.get("memory", "docs")
    assert isinstance(store, MemoryDocumentStore)
    store.save(doc_id, {"domain": domain, "owner": f"o-{doc_id}", "age": 7})
    app.publish(ChangeMeta(doc_id, "memory", "docs", domain=domain), "cases")


def run_with_a_broken_source(app: App) -> Pillow:
    """Bootstrap, drop ``cases-b``'s table, then process three batches that each write a
    and b: a is written, b fails three times and is quarantined. The usage is recorded."""
    pillow = app.get_pillow(PILLOW)
    pillow.bootstrap()
    engine = sa.create_engine(os.environ["REPORT_APP_DB"])
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE report_cases_b"))
    engine.dispose()
    for i in range(3):
        publish(app, f"a{i}", "a")
        publish(app, f"b{i}", "b")
    with ReportUsageRecorder(pillow, interval=3600):
        pillow.run(forever=False)
    return pillow
