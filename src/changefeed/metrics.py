"""Prometheus metrics for pillows: what a batch did, and where each pillow stands.

Two halves, because they are measured in different places. `PillowMetrics` is a
`PillowListener`: it counts what each batch did (changes per partition, errors, batch sizes,
time per processor) in the process that runs the pillow, once per batch, so it costs nothing
per change. `StatusCollector` computes lag, checkpoint age and error queue size when
Prometheus scrapes, from `changefeed.status.pillow_status`, so the numbers agree with
``changefeed status`` and the dashboard and stay right even while a pillow is down; so are
the report data sources' series (`ReportFamilies`, from the reports database).

Under the supervisor, children write their counters to ``PROMETHEUS_MULTIPROC_DIR`` and the
supervisor serves them all (prometheus-client's multiprocess mode) next to the status gauges.
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from changefeed.extras import MissingExtraError

try:
    from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.multiprocess import MultiProcessCollector
    from prometheus_client.registry import Collector
except ImportError as exc:
    raise MissingExtraError("web", exc) from exc

from changefeed.change import TopicPartition
from changefeed.pillow import BatchReport, DependencyDownError, Pillow, PillowListener
from changefeed.processors.reports.states import BACKFILLING
from changefeed.report_status import TOP_DOMAINS, ReportsStatus, reports_or_error
from changefeed.status import pillow_status

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from changefeed.app import App

log = logging.getLogger("changefeed.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

BATCH_SIZE_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class PillowMetrics(PillowListener):
    """Counts what batches did; attach with ``metrics.attach(pillow)``.

    Changes per partition come from checkpoint deltas (offsets are dense per partition), so
    the pillow's hot loop does no extra work; the baseline is the pillow's checkpoint when
    attached, which is where it starts reading.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.changes = Counter(
            "changefeed_changes_processed",
            "Changes read and processed (checkpointed), per partition.",
            ["pillow", "topic", "partition"],
            registry=r,
        )
        self.errors = Counter(
            "changefeed_errors",
            "Changes sent to the error queue by the pillow.",
            ["pillow"],
            registry=r,
        )
        self.batches = Counter(
            "changefeed_batches", "Batches processed and checkpointed.", ["pillow"], registry=r
        )
        self.batch_size = Histogram(
            "changefeed_batch_size",
            "Changes per batch (before per-document dedupe).",
            ["pillow"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "changefeed_batch_seconds",
            "Time to process and checkpoint one batch.",
            ["pillow"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.processor_seconds = Histogram(
            "changefeed_processor_seconds",
            "Time one processor spent on one batch.",
            ["pillow", "processor"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.batch_retries = Counter(
            "changefeed_batch_retries",
            "Whole-batch retries because a dependency was down.",
            ["pillow"],
            registry=r,
        )
        self._offsets: dict[tuple[str, TopicPartition], int] = {}
        self._lock = threading.Lock()

    def attach(self, pillow: Pillow) -> PillowMetrics:
        """Register on ``pillow`` and take its current checkpoints as the counting baseline."""
        saved = pillow.checkpoints.get(pillow.name)
        with self._lock:
            for tp in pillow.change_feed.topic_partitions():
                self._offsets[(pillow.name, tp)] = saved.get(tp, 0)
            for tp, offset in saved.items():
                self._offsets[(pillow.name, tp)] = offset
        if self not in pillow.listeners:
            pillow.listeners.append(self)
        return self

    def on_batch(self, pillow: Pillow, report: BatchReport) -> None:
        name = report.pillow
        with self._lock:
            offsets = self._offsets
            for tp, offset in report.checkpoint.items():
                key = (name, tp)
                delta = offset - offsets.get(key, 0)
                offsets[key] = offset
                if delta > 0:
                    self.changes.labels(name, tp.topic, str(tp.partition)).inc(delta)
        self.batches.labels(name).inc()
        self.batch_size.labels(name).observe(report.changes)
        self.batch_seconds.labels(name).observe(report.duration)
        if report.failures:
            self.errors.labels(name).inc(report.failures)
        for processor, seconds in report.processor_seconds.items():
            self.processor_seconds.labels(name, processor).observe(seconds)

    def on_dependency_down(self, pillow: Pillow, error: DependencyDownError, delay: float) -> None:
        self.batch_retries.labels(pillow.name).inc()


class StatusCollector(Collector):
    """Lag, checkpoint age and error queue size per pillow, computed on every scrape, and
    the data sources of its `ReportTablesProcessor`s (`ReportFamilies`).

    It builds its own pillows (own feed connections), so scraping never shares a connection
    with a running pillow's loop.
    """

    def __init__(
        self, app: App, pillow_names: Sequence[str] | None = None, top_domains: int = TOP_DOMAINS
    ) -> None:
        self.app = app
        self.pillow_names = list(pillow_names) if pillow_names is not None else None
        self.top_domains = top_domains
        self._pillows: dict[str, Pillow] = {}
        self._lock = threading.Lock()

    def _iter_pillows(self) -> Iterator[Pillow]:
        names = self.pillow_names if self.pillow_names is not None else self.app.pillow_names
        for name in names:
            pillow = self._pillows.get(name)
            if pillow is None:
                pillow = self._pillows[name] = self.app.get_pillow(name)
            yield pillow

    def collect(self) -> Iterable[Metric]:
        part_labels = ["pillow", "topic", "partition"]
        lag = GaugeMetricFamily(
            "changefeed_lag", "Changes in the log not yet checkpointed.", labels=part_labels
        )
        head = GaugeMetricFamily(
            "changefeed_head_offset", "Offset the next published change gets.", labels=part_labels
        )
        checkpoint = GaugeMetricFamily(
            "changefeed_checkpoint_offset", "Next offset the pillow will read.", labels=part_labels
        )
        age = GaugeMetricFamily(
            "changefeed_checkpoint_age_seconds",
            "Seconds since the checkpoint was last written.",
            labels=part_labels,
        )
        queue = GaugeMetricFamily(
            "changefeed_error_queue_size",
            "Error queue entries per status.",
            labels=["pillow", "status"],
        )
        up = GaugeMetricFamily(
            "changefeed_status_up", "1 when the pillow's status could be read.", labels=["pillow"]
        )
        reports = ReportFamilies(self.top_domains)
        with self._lock:
            for pillow in self._iter_pillows():
                try:
                    st = pillow_status(self.app, pillow)
                except Exception as exc:  # noqa: BLE001 - a scrape must not fail as a whole
                    log.warning("status of pillow %s failed: %s", pillow.name, exc)
                    up.add_metric([pillow.name], 0)
                    continue
                found = reports_or_error(pillow, self.top_domains)
                if isinstance(found, str):
                    log.warning("report data sources of pillow %s: %s", pillow.name, found)
                for report in found if isinstance(found, list) else []:
                    reports.add(report)
                up.add_metric([pillow.name], 1)
                for p in st.partitions:
                    labels = [st.pillow, p.topic, str(p.partition)]
                    lag.add_metric(labels, p.lag)
                    head.add_metric(labels, p.head)
                    if p.checkpoint is not None:
                        checkpoint.add_metric(labels, p.checkpoint)
                    if p.checkpoint_age is not None:
                        age.add_metric(labels, p.checkpoint_age)
                queue.add_metric([st.pillow, "pending"], st.errors_pending)
                queue.add_metric([st.pillow, "parked"], st.errors_parked)
        return [lag, head, checkpoint, age, queue, up, *reports.families(), self._slot_lag()]

    def _slot_lag(self) -> Metric:
        """WAL held by each watched CDC slot (`App.watch_replication_slot`): a slot nobody
        reads fills the database's disk, so alerts watch it beside the pillows."""
        gauge = GaugeMetricFamily(
            "changefeed_replication_slot_lag_bytes",
            "WAL written since the slot's consumer last confirmed.",
            labels=["slot"],
        )
        for database_url, slot in self.app.replication_slots:
            from changefeed.sources.postgres_cdc import slot_status

            try:
                st = slot_status(database_url, slot)
            except Exception as exc:  # noqa: BLE001 - a scrape must not fail as a whole
                log.warning("replication slot %s: %s", slot, exc)
                continue
            if st.get("exists") and st.get("lag_bytes") is not None:
                gauge.add_metric([slot], float(st["lag_bytes"]))
        return gauge


class ReportFamilies:
    """The report data source series of one scrape, read from the reports database
    (`changefeed.report_status`), so they are the same under ``run`` and ``supervise``.

    Per data source (labels ``pillow``, ``data_source``): rows written and deleted, seconds
    and failures as counters (totals kept by `changefeed.report_usage`), its state as a
    gauge of 1 with a ``state`` label, back-fill progress. Per pillow and state: how many.
    Per domain: seconds, for the ``top_domains`` slowest only, so the label set stays
    bounded however many domains there are (a domain that leaves the top drops out)."""

    def __init__(self, top_domains: int = TOP_DOMAINS) -> None:
        self.top_domains = top_domains
        labels = ["pillow", "data_source"]
        self.counters = {
            key: CounterMetricFamily(f"changefeed_report_{key}", text, labels=labels)
            for key, text in (
                ("rows_written", "Report table rows written, per data source."),
                ("rows_deleted", "Report table rows deleted, per data source."),
                ("seconds", "Seconds spent writing each data source's rows."),
                ("failures", "Changes a data source failed (queued under its name)."),
            )
        }
        self.state = GaugeMetricFamily(
            "changefeed_report_data_source_state",
            "1 for each data source, labelled with its state (live, back-filling, "
            "quarantined, removed).",
            labels=[*labels, "state"],
        )
        self.progress = GaugeMetricFamily(
            "changefeed_report_backfill_progress",
            "Documents a back-filling data source's back-fill went through.",
            labels=labels,
        )
        self.per_state = GaugeMetricFamily(
            "changefeed_report_data_sources",
            "Data sources per state.",
            labels=["pillow", "state"],
        )
        self.domain_seconds = CounterMetricFamily(
            "changefeed_report_domain_seconds",
            "Seconds spent on the documents of a domain (the slowest domains only).",
            labels=["pillow", "domain"],
        )

    def add(self, report: ReportsStatus) -> None:
        pillow = report.pillow
        for state, count in report.counts().items():
            self.per_state.add_metric([pillow, state], count)
        for source in report.data_sources:
            labels = [pillow, source.name]
            c = source.counters
            for key, value in (
                ("rows_written", c.rows_written),
                ("rows_deleted", c.rows_deleted),
                ("seconds", c.seconds),
                ("failures", c.failures),
            ):
                self.counters[key].add_metric(labels, value)
            self.state.add_metric([*labels, source.state], 1)
            if source.state == BACKFILLING:
                self.progress.add_metric(labels, source.progress)
        for domain, seconds in report.slowest_domains[: self.top_domains]:
            self.domain_seconds.add_metric([pillow, domain], seconds)

    def families(self) -> list[Metric]:
        return [
            *self.counters.values(),
            self.state,
            self.progress,
            self.per_state,
            self.domain_seconds,
        ]


def multiprocess_registry(path: str | None = None) -> CollectorRegistry:
    """A registry that gathers the counters every child process wrote to ``path``."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path or os.environ[MULTIPROC_ENV])
    return registry


def serve(
    registry: CollectorRegistry, port: int, host: str = "127.0.0.1", token: str | None = None
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``/metrics`` for ``registry`` on a daemon thread; returns (server, thread).

    With ``token`` every request must carry it (``Authorization: Bearer TOKEN`` or
    ``?token=TOKEN``): metric labels name pillows, topics and processors, which is more
    than an address reachable from other machines should tell anyone who asks."""
    if token is None:
        return start_http_server(port, addr=host, registry=registry)
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import make_wsgi_app

    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if not _token_ok(environ, token):
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
            )
            return [b"token required\n"]
        return metrics_app(environ, start_response)

    class _Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class _Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            """No access log on stderr."""

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("_MetricsServer", (_Server,), {"address_family": family})
    server: WSGIServer = make_server(host, port, app, server_class, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return server, thread


def _token_ok(environ: dict[str, Any], token: str) -> bool:
    """Whether the request carries ``token`` (compared in constant time)."""
    header = str(environ.get("HTTP_AUTHORIZATION", ""))
    given = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if not given:
        values = parse_qs(str(environ.get("QUERY_STRING", ""))).get("token", [])
        given = values[0] if values else ""
    return hmac.compare_digest(given.encode(), token.encode())
