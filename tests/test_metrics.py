"""Prometheus metrics: batch counters from the listener, status gauges on scrape, serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from changefeed.app import App
from changefeed.change import Change, ChangeMeta, TopicPartition
from changefeed.metrics import PillowMetrics, StatusCollector, serve
from changefeed.pillow import Pillow
from changefeed.processors.base import FunctionProcessor, NoopProcessor
from changefeed.status import pillow_status
from tests.harness._util import free_port


def fail_bad(change: Change) -> None:
    if change.id.startswith("bad"):
        raise ValueError(f"cannot index {change.id}")


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    a = App(f"sqlite:///{tmp_path}/log.db?partitions=2", f"sqlite:///{tmp_path}/state.db")
    a.backend.admin().create_topic("case", 2)
    a.add_pillow(
        "cases",
        lambda app: app.constructed_pillow(
            "cases",
            ["case"],
            [NoopProcessor(), FunctionProcessor(fail_bad, "indexer", needs_documents=False)],
            batch_size=7,
        ),
    )
    yield a
    a.close()


def publish(app: App, ids: list[str]) -> None:
    app.publisher().publish_many(("case", ChangeMeta(i, "sql", "db")) for i in ids)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def processed(registry: CollectorRegistry, pillow: Pillow) -> dict[TopicPartition, float]:
    return {
        tp: value(
            registry,
            "changefeed_changes_processed_total",
            pillow=pillow.name,
            topic=tp.topic,
            partition=str(tp.partition),
        )
        for tp in pillow.change_feed.topic_partitions()
    }


def test_listener_counts_changes_per_partition_errors_and_timings(app: App) -> None:
    publish(app, [f"doc{i}" for i in range(27)] + ["bad1", "bad2", "bad3"])
    pillow = app.get_pillow("cases")
    metrics = PillowMetrics().attach(pillow)
    reg = metrics.registry
    assert pillow.run(forever=False) == 30

    counts = processed(reg, pillow)
    assert counts == {tp: float(off) for tp, off in app.checkpoints.get("cases").items()}
    assert sum(counts.values()) == 30 and all(counts.values())
    assert value(reg, "changefeed_errors_total", pillow="cases") == 3
    batches = value(reg, "changefeed_batches_total", pillow="cases")
    assert batches >= 30 / 7
    assert value(reg, "changefeed_batch_size_count", pillow="cases") == batches
    assert value(reg, "changefeed_batch_size_sum", pillow="cases") == 30
    for proc in ("NoopProcessor", "indexer"):
        labels = {"pillow": "cases", "processor": proc}
        assert value(reg, "changefeed_processor_seconds_count", **labels) == batches
    assert value(reg, "changefeed_batch_seconds_sum", pillow="cases") > 0

    # A restarted pillow counts from its checkpoint, not from the start of the log.
    publish(app, ["doc-new-1", "doc-new-2"])
    again = app.get_pillow("cases")
    fresh = PillowMetrics().attach(again)
    assert again.run(forever=False) == 2
    assert sum(processed(fresh.registry, again).values()) == 2


def test_status_collector_matches_pillow_status(app: App) -> None:
    publish(app, [f"doc{i}" for i in range(10)] + ["bad1"])
    pillow = app.get_pillow("cases")
    pillow.run(forever=False)
    publish(app, ["late1", "late2", "late3"])  # unprocessed: lag 3

    registry = CollectorRegistry()
    registry.register(StatusCollector(app, ["cases"]))
    status = pillow_status(app, pillow)
    assert status.lag == 3
    for p in status.partitions:
        labels = {"pillow": "cases", "topic": p.topic, "partition": str(p.partition)}
        assert value(registry, "changefeed_lag", **labels) == p.lag
        assert value(registry, "changefeed_head_offset", **labels) == p.head
        assert value(registry, "changefeed_checkpoint_offset", **labels) == p.checkpoint
        age = registry.get_sample_value("changefeed_checkpoint_age_seconds", labels)
        assert age is not None and age >= 0
    queue = {"pillow": "cases", "status": "pending"}
    assert value(registry, "changefeed_error_queue_size", **queue) == 1
    assert value(registry, "changefeed_status_up", pillow="cases") == 1


def test_metrics_are_served_over_http(app: App) -> None:
    publish(app, ["doc1", "doc2"])
    pillow = app.get_pillow("cases")
    metrics = PillowMetrics().attach(pillow)
    metrics.registry.register(StatusCollector(app, ["cases"]))
    pillow.run(forever=False)
    port = free_port()
    server, thread = serve(metrics.registry, port)
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert "changefeed_changes_processed_total{" in text
    assert 'changefeed_lag{partition="0",pillow="cases",topic="case"} 0.0' in text
    assert 'changefeed_error_queue_size{pillow="cases",status="parked"} 0.0' in text


def test_report_series_per_data_source_after_a_batch(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prometheus_client import generate_latest

    from tests.apps.report_pillow import PILLOW, make_app, run_with_a_broken_source

    monkeypatch.setenv("REPORT_APP_DIR", str(tmp_path))
    monkeypatch.setenv("REPORT_APP_DB", db_url)
    app = make_app()
    run_with_a_broken_source(app)
    registry = CollectorRegistry()
    registry.register(StatusCollector(app, [PILLOW], top_domains=1))
    text = generate_latest(registry).decode()
    assert (
        'changefeed_report_rows_written_total{data_source="cases-a",pillow="reports"} 3.0' in text
    )

    def source(name: str, data_source: str, **labels: str) -> float | None:
        return registry.get_sample_value(
            name, {"pillow": PILLOW, "data_source": data_source, **labels}
        )

    assert source("changefeed_report_rows_written_total", "cases-c") == 0
    assert source("changefeed_report_rows_deleted_total", "cases-a") == 0
    assert source("changefeed_report_failures_total", "cases-b") == 3
    assert (source("changefeed_report_seconds_total", "cases-a") or 0) > 0
    assert source("changefeed_report_data_source_state", "cases-b", state="quarantined") == 1
    assert source("changefeed_report_data_source_state", "cases-a", state="live") == 1
    assert source("changefeed_report_data_source_state", "cases-b", state="live") is None
    per_state = {"pillow": PILLOW, "state": "quarantined"}
    assert registry.get_sample_value("changefeed_report_data_sources", per_state) == 1
    per_state["state"] = "back-filling"
    assert registry.get_sample_value("changefeed_report_data_sources", per_state) == 0
    # Two domains took time; only the slowest is a label (top_domains=1).
    domains = [
        line
        for line in text.splitlines()
        if line.startswith("changefeed_report_domain_seconds_total{")
    ]
    assert len(domains) == 1 and 'pillow="reports"' in domains[0]
    app.close()


def test_an_unreachable_reports_database_leaves_the_other_series(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.apps.report_pillow import PILLOW, make_app

    monkeypatch.setenv("REPORT_APP_DIR", str(tmp_path))
    monkeypatch.setenv("REPORT_APP_DB", "postgresql+psycopg://nobody:pw@127.0.0.1:1/reports")
    app = make_app()
    registry = CollectorRegistry()
    registry.register(StatusCollector(app, [PILLOW]))
    assert value(registry, "changefeed_status_up", pillow=PILLOW) == 1
    assert (
        registry.get_sample_value(
            "changefeed_lag", {"pillow": PILLOW, "topic": "cases", "partition": "0"}
        )
        == 0
    )
    per_state = {"pillow": PILLOW, "state": "live"}
    assert registry.get_sample_value("changefeed_report_data_sources", per_state) is None
    app.close()
