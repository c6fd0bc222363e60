"""The data sources of a pillow's `ReportTablesProcessor`s as an operator sees them.

Read from the reports database (the states of `StateStore`, the totals of `UsageStore`), so
``changefeed status``, the dashboard and the metrics exporter agree with each other and
work from any process, whether the pillow runs or not. Shared by all three.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from changefeed.pillow import Pillow
from changefeed.processors.reports import ReportTablesProcessor, SourceCounters, SourceState
from changefeed.processors.reports.states import QUARANTINED, STATES
from changefeed.processors.reports.usage import UsageStore
from changefeed.status import redacted

TOP_DOMAINS = 20
"""Domains listed (and labelled in metrics) by default: the slowest, by seconds spent."""

__all__ = [
    "TOP_DOMAINS",
    "NotQuarantinedError",
    "ReportsStatus",
    "enable_data_source",
    "reports_or_error",
    "reports_status",
]


@dataclass(slots=True)
class ReportsStatus:
    """One `ReportTablesProcessor` of a pillow: each data source's state with its totals
    (rows written and deleted, seconds, failures), and the slowest domains."""

    pillow: str
    processor: str
    data_sources: list[SourceState] = field(default_factory=list)
    slowest_domains: list[tuple[str, float]] = field(default_factory=list)
    domains: int = 0
    """Domains with recorded time (``slowest_domains`` lists the first of them)."""

    def counts(self) -> dict[str, int]:
        """Data sources per state (every state, zeros included)."""
        counts = dict.fromkeys(STATES, 0)
        for source in self.data_sources:
            counts[source.state] = counts.get(source.state, 0) + 1
        return counts

    def in_state(self, state: str) -> list[SourceState]:
        return [s for s in self.data_sources if s.state == state]

    def slowest_sources(self, n: int) -> list[SourceState]:
        ranked = sorted(self.data_sources, key=lambda s: (-s.counters.seconds, s.name))
        return [s for s in ranked[:n] if s.counters.seconds > 0]

    def to_dict(self) -> dict[str, Any]:
        return redacted(
            {
                "pillow": self.pillow,
                "processor": self.processor,
                "counts": self.counts(),
                "data_sources": [s.to_dict() for s in self.data_sources],
                "slowest_domains": [
                    {"domain": d, "seconds": round(s, 6)} for d, s in self.slowest_domains
                ],
                "domains": self.domains,
            }
        )


def reports_status(pillow: Pillow, top_domains: int = TOP_DOMAINS) -> list[ReportsStatus]:
    """One `ReportsStatus` per `ReportTablesProcessor` of ``pillow`` (none for a pillow
    without one): the states its selection takes, by name."""
    found = []
    for processor in pillow.processors:
        if isinstance(processor, ReportTablesProcessor):
            found.append(_status(pillow.name, processor, top_domains))
    return found


def reports_or_error(pillow: Pillow, top_domains: int = TOP_DOMAINS) -> list[ReportsStatus] | str:
    """`reports_status`, or why it could not be read (one line, credentials redacted): a
    reports database that is down must not hide the rest of a pillow's status."""
    try:
        return reports_status(pillow, top_domains)
    except Exception as exc:  # noqa: BLE001 - shown to the operator instead
        lines = str(exc).strip().splitlines()
        return str(redacted(f"{type(exc).__name__}: {lines[0] if lines else ''}"))


def _status(pillow: str, processor: ReportTablesProcessor, top_domains: int) -> ReportsStatus:
    selection = processor.selection
    usage = UsageStore(processor.engine).read(pillow, processor.name)
    sources = []
    for state in processor.states.read().values():
        if not selection.takes(state.name, state.table):
            continue
        # The stored counters are a snapshot of the last state change; the usage table
        # has the running totals.
        state.counters = usage.sources.get(state.name) or SourceCounters()
        sources.append(state)
    return ReportsStatus(
        pillow,
        processor.name,
        sources,
        usage.slowest_domains(top_domains),
        len(usage.domain_seconds),
    )


class NotQuarantinedError(ValueError):
    """Only a quarantined data source can be enabled."""


def enable_data_source(pillow: Pillow, name: str) -> None:
    """Lift the quarantine of data source ``name`` of ``pillow`` as ``changefeed reports
    enable`` does: its stored state becomes back-filling and a reload is requested, so the
    pillow back-fills what it skipped, now if it runs, else when it starts. `KeyError`
    when the pillow has no such data source, `NotQuarantinedError` when it is not
    quarantined."""
    for processor in pillow.processors:
        if not isinstance(processor, ReportTablesProcessor):
            continue
        store = processor.states
        state = store.read().get(name)
        if state is None or not processor.selection.takes(state.name, state.table):
            continue
        if state.state != QUARANTINED:
            raise NotQuarantinedError(f"data source {name!r} is {state.state}, not quarantined")
        store.request_backfill(name)
        return
    raise KeyError(name)
