"""The shipped Grafana dashboard and Prometheus alert rules (monitoring/) use only metrics the
exporter really serves: a small pillow runs, its exporter is scraped over HTTP (with a CDC
slot watched on the real PostgreSQL server), and every metric name in the dashboard's and
the rules' expressions must be among what the scrape returned."""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from changefeed import ChangeMeta, NoopProcessor
from changefeed.metrics import PillowMetrics, StatusCollector, serve
from changefeed.sources.postgres_cdc import create_slot, drop_slot
from tests.apps.report_pillow import PILLOW, make_app, run_with_a_broken_source

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "monitoring" / "grafana-dashboard.json"
ALERTS = ROOT / "monitoring" / "alerts.yml"

_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "bool", "offset"}
_KEYWORDS |= {"group_left", "group_right", "inf", "nan"}
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords,
    label names (inside ``{}`` or a ``by (...)`` clause) or durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        name = match.group(0)
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        if var.get("type") == "query" and isinstance(query, str):
            m = re.match(r"label_values\((\w+)", query)
            if m:
                exprs.append(m.group(1))
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


@pytest.fixture
def slot(pg_dsn: str) -> Iterator[str]:
    name = f"s_{uuid.uuid4().hex[:12]}"
    create_slot(pg_dsn, name)
    yield name
    drop_slot(pg_dsn, name)


@pytest.fixture
def scraped(tmp_path: Path, pg_dsn: str, slot: str, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Names (families and samples) one scrape of a small app's exporter returns: a plain
    pillow, and a report pillow with a quarantined data source."""
    monkeypatch.setenv("REPORT_APP_DIR", str(tmp_path))
    monkeypatch.setenv("REPORT_APP_DB", f"sqlite:///{tmp_path}/reports.db")
    app = make_app()
    run_with_a_broken_source(app)
    app.add_pillow("mon", lambda a: a.constructed_pillow("mon", ["records"], NoopProcessor()))
    app.watch_replication_slot(pg_dsn, slot)
    with app.backend.publisher() as pub:
        pub.publish_many(("records", ChangeMeta(f"d{i}", "memory", "docs")) for i in range(20))
    registry = CollectorRegistry()
    metrics = PillowMetrics(registry)
    pillow = app.get_pillow("mon")
    metrics.attach(pillow)
    pillow.run(forever=False)
    registry.register(StatusCollector(app, ["mon", PILLOW]))
    server, thread = serve(registry, 0)
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
            text = resp.read().decode()
    finally:
        server.shutdown()
        thread.join(5)
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        # A labelled counter or histogram is declared before its first increment; the
        # series Prometheus will store then carry these suffixes.
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ()))
    return names


def test_names_are_found_in_expressions() -> None:
    assert metric_names(
        'sum by (pillow) (rate(changefeed_batches_total{pillow=~"$p"}[5m])) > 0 '
        "and on (pillow) changefeed_lag"
    ) == {"changefeed_batches_total", "changefeed_lag"}


def test_dashboard_and_alerts_use_exported_metrics(scraped: set[str]) -> None:
    assert "changefeed_replication_slot_lag_bytes" in scraped
    assert "changefeed_report_rows_written_total" in scraped
    used = {name for expr in dashboard_exprs() + alert_exprs() for name in metric_names(expr)}
    assert used, "no metric found in the dashboard or the rules"
    unknown = used - scraped
    assert not unknown, f"not exported: {sorted(unknown)}"
    # The rules cover what operators page on.
    alerts = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    assert len(alerts) >= 5
    rule_names = {name for expr in alert_exprs() for name in metric_names(expr)}
    for needed in (
        "changefeed_lag",
        "changefeed_checkpoint_age_seconds",
        "changefeed_error_queue_size",
        "changefeed_batches_total",
        "changefeed_replication_slot_lag_bytes",
        "changefeed_report_data_source_state",
    ):
        assert needed in rule_names
