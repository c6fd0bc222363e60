"""``changefeed demo``: the whole loop on the embedded default, with nothing to set up.

Sample cases and forms live in an embedded SQL document store (SQLite). Every save publishes
a change stub to the embedded log, and two pillows keep report tables in sync while a writer
keeps creating, updating, closing and deleting documents. At the end the report tables are
verified against the source documents (`changefeed verify`): the summary proves they match.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from changefeed.app import App
from changefeed.change import ChangeMeta
from changefeed.db import make_engine
from changefeed.lag import pillow_lag
from changefeed.lifecycle import StopFlag
from changefeed.pillow import Pillow
from changefeed.processors.reports import ReportTableProcessor
from changefeed.stores.sql import SQLDocumentStore
from changefeed.verify import verify_pillow

DOMAINS = ("clinic-north", "clinic-south", "field-team")
OWNERS = ("amina", "bruno", "chen", "dara", "emeka", "farah")
PRODUCTS = ("ors", "zinc", "bednet", "vaccine", "vitamin-a")

CASE_REPORT: dict[str, Any] = {
    "name": "open-cases",
    "table": "report_open_cases",
    "description": "One row per open case: owner, priority and visit count.",
    "filter": {"type": "equals", "property_name": "closed", "value": False},
    "columns": [
        {"name": "domain", "type": "string", "index": True},
        {"name": "owner", "type": "string", "index": True},
        {"name": "priority", "type": "integer"},
        {"name": "visits", "type": "integer"},
        {"name": "name", "type": "string"},
    ],
}

FORM_REPORT: dict[str, Any] = {
    "name": "form-items",
    "table": "report_form_items",
    "description": "One row per item delivered on a form.",
    "base_item_expression": {"type": "property_name", "property_name": "items"},
    "columns": [
        {"name": "product", "type": "string"},
        {"name": "quantity", "type": "integer"},
        {
            "name": "domain",
            "type": "string",
            "expression": {
                "type": "root_doc",
                "expression": {"type": "property_name", "property_name": "domain"},
            },
        },
    ],
}


@dataclass
class DemoResult:
    published: int = 0
    writes: int = 0
    seconds: float = 0.0
    tables: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    """table -> (rows, missing, extra, different)"""

    @property
    def ok(self) -> bool:
        return all(m == e == d == 0 for _, m, e, d in self.tables.values())


APP_MODULE = "demo_app"
"""The module `write_app_module` writes into a kept demo's folder."""


def _configure(
    app: App, directory: Path
) -> tuple[SQLDocumentStore, SQLDocumentStore, ReportTableProcessor, ReportTableProcessor]:
    """The demo's document stores and pillows on ``app``, files under ``directory``: one
    definition for the demo run and for the app module that inspects a kept demo."""
    source = make_engine(f"sqlite:///{directory / 'documents.db'}")
    cases = SQLDocumentStore(source, "cases", data_source_name="cases")
    forms = SQLDocumentStore(source, "forms", data_source_name="forms")
    for store in (cases, forms):
        store.create()
        app.document_stores.register(store)
    reports_url = f"sqlite:///{directory / 'reports.db'}"
    case_report = ReportTableProcessor(CASE_REPORT, reports_url)
    form_report = ReportTableProcessor(FORM_REPORT, reports_url)
    app.add_pillow(
        "case-report",
        lambda a: a.constructed_pillow(
            "case-report", ["case"], case_report, batch_size=500, max_wait=0.2
        ),
    )
    app.add_pillow(
        "form-report",
        lambda a: a.constructed_pillow(
            "form-report", ["form"], form_report, batch_size=500, max_wait=0.2
        ),
    )
    return cases, forms, case_report, form_report


def build_app(directory: str | Path) -> App:
    """The app of a demo kept in ``directory`` (``changefeed demo --dir``), so ``status``,
    ``checkpoint``, ``errors`` and ``run`` work on its pillows afterwards."""
    directory = Path(directory)
    app = App(
        f"sqlite:///{directory / 'log.db'}?partitions=4", f"sqlite:///{directory / 'state.db'}"
    )
    _configure(app, directory)
    return app


def write_app_module(directory: Path) -> Path:
    """Write ``demo_app.py`` into a kept demo's folder: the app, found relative to the
    module itself, so the folder can be moved."""
    path = directory / f"{APP_MODULE}.py"
    path.write_text(
        '"""The app of a kept changefeed demo: changefeed --app demo_app:app status."""\n\n'
        "from pathlib import Path\n\n"
        "from changefeed.demo import build_app\n\n"
        "app = build_app(Path(__file__).resolve().parent)\n"
    )
    return path


class Demo:
    def __init__(
        self, directory: Path, *, cases: int, forms: int, updates: int, seed: int = 7
    ) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cases_n, self.forms_n, self.updates_n = cases, forms, updates
        self.rng = random.Random(seed)
        self.app = App(
            f"sqlite:///{self.dir / 'log.db'}?partitions=4", f"sqlite:///{self.dir / 'state.db'}"
        )
        self.cases, self.forms, self.case_report, self.form_report = _configure(self.app, self.dir)
        self.reports_url = f"sqlite:///{self.dir / 'reports.db'}"
        self.published = 0

    # -- the application side: save a document, publish its change ------------------------

    def _save(
        self, store: SQLDocumentStore, doc_type: str, doc_id: str, doc: dict[str, Any] | None
    ) -> None:
        version = store.delete(doc_id) if doc is None else store.save(doc_id, doc)
        domain = None if doc is None else doc.get("domain")
        self.app.publish(
            ChangeMeta(
                doc_id,
                "sql",
                store.data_source_name,
                document_type=doc_type,
                domain=domain,
                is_deletion=doc is None,
                version=version,
            )
        )
        self.published += 1

    def _new_case(self, i: int) -> dict[str, Any]:
        rng = self.rng
        return {
            "doc_type": "case",
            "name": f"case {i}",
            "domain": rng.choice(DOMAINS),
            "owner": rng.choice(OWNERS),
            "priority": rng.randint(1, 5),
            "visits": 0,
            "closed": False,
        }

    def _new_form(self, i: int) -> dict[str, Any]:
        rng = self.rng
        items = [
            {"product": rng.choice(PRODUCTS), "quantity": rng.randint(1, 20)}
            for _ in range(rng.randint(1, 4))
        ]
        return {
            "doc_type": "form",
            "domain": rng.choice(DOMAINS),
            "items": items,
            "received_on": f"2026-11-{1 + i % 26:02d}",
        }

    def write(self, stop: StopFlag, progress: Callable[[int], None]) -> int:
        """Create documents, then keep changing them; returns the number of writes."""
        rng = self.rng
        live_cases: dict[str, dict[str, Any]] = {}
        live_forms: dict[str, dict[str, Any]] = {}
        writes = 0
        for i in range(max(self.cases_n, self.forms_n)):
            if i < self.cases_n:
                doc = live_cases[f"case-{i}"] = self._new_case(i)
                self._save(self.cases, "case", f"case-{i}", doc)
                writes += 1
            if i < self.forms_n:
                doc = live_forms[f"form-{i}"] = self._new_form(i)
                self._save(self.forms, "form", f"form-{i}", doc)
                writes += 1
            progress(writes)
        for _ in range(self.updates_n):
            if stop.is_set():
                break
            roll = rng.random()
            if roll < 0.55 and live_cases:
                doc_id = rng.choice(list(live_cases))
                doc = live_cases[doc_id]
                doc["visits"] += 1
                doc["priority"] = rng.randint(1, 5)
                doc["owner"] = rng.choice(OWNERS)
                self._save(self.cases, "case", doc_id, doc)
            elif roll < 0.75 and live_cases:
                doc_id = rng.choice(list(live_cases))
                live_cases[doc_id]["closed"] = not live_cases[doc_id]["closed"]
                self._save(self.cases, "case", doc_id, live_cases[doc_id])
            elif roll < 0.85 and live_cases:
                doc_id = rng.choice(list(live_cases))
                del live_cases[doc_id]
                self._save(self.cases, "case", doc_id, None)
            elif roll < 0.95 and live_forms:
                doc_id = rng.choice(list(live_forms))
                doc = live_forms[doc_id]
                doc["items"] = self._new_form(0)["items"]
                self._save(self.forms, "form", doc_id, doc)
            elif live_forms:
                doc_id = rng.choice(list(live_forms))
                del live_forms[doc_id]
                self._save(self.forms, "form", doc_id, None)
            writes += 1
            progress(writes)
        return writes

    # -- checking the result ----------------------------------------------------------

    def verify(
        self, processor: ReportTableProcessor, store: SQLDocumentStore
    ) -> tuple[int, int, int, int]:
        """(rows, missing, extra, different) of a report table against its source: what
        `changefeed verify` reports for the pillow feeding it, over the store it is built from."""
        for name in self.app.pillow_names:
            pillow = self.app.get_pillow(name)
            try:
                if processor in pillow.processors:
                    found = verify_pillow(pillow, stores=[store])
                    report = next(r for r in found.processors if r.processor == processor.name)
                    return (
                        processor.count_rows(),
                        report.missing,
                        report.extra,
                        report.stale + report.different,
                    )
            finally:
                pillow.change_feed.close()
        raise LookupError(f"no pillow of the demo feeds {processor.name}")

    def lag(self, pillows: list[Pillow]) -> int:
        return sum(pillow_lag(self.app.checkpoints, pillow) for pillow in pillows)

    def run(self, console: Console) -> DemoResult:
        started = time.monotonic()
        result = DemoResult()
        self.app.checkpoints.create()
        self.app.error_queue.create()
        pillows = [self.app.get_pillow(name) for name in self.app.pillow_names]
        for pillow in pillows:
            pillow.bootstrap()
        threads = [threading.Thread(target=p.run, name=p.name, daemon=True) for p in pillows]
        for t in threads:
            t.start()
        total_writes = self.cases_n + self.forms_n + self.updates_n
        stop = StopFlag()
        with Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as progress:
            w = progress.add_task("documents written", total=total_writes)
            p = progress.add_task("changes processed (all)", total=None)
            writer = threading.Thread(
                target=lambda: setattr(
                    result, "writes", self.write(stop, lambda n: progress.update(w, completed=n))
                ),
                name="writer",
                daemon=True,
            )
            writer.start()
            while writer.is_alive() or self.lag(pillows) > 0:
                lag = self.lag(pillows)
                progress.update(p, total=self.published, completed=max(0, self.published - lag))
                time.sleep(0.1)
                if time.monotonic() - started > 120:
                    stop.set()
                    console.print("[red]demo took too long; stopping[/red]")
                    break
            writer.join()
            progress.update(p, total=self.published, completed=self.published - self.lag(pillows))
        for pillow in pillows:
            pillow.stop()
        for t in threads:
            t.join(timeout=10)
        result.published = self.published
        result.seconds = time.monotonic() - started
        result.tables["report_open_cases"] = self.verify(self.case_report, self.cases)
        result.tables["report_form_items"] = self.verify(self.form_report, self.forms)
        return result

    def close(self) -> None:
        self.app.close()
        self.case_report.close()
        self.form_report.close()
