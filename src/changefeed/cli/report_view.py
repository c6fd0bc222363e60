"""The data sources of a pillow's `ReportTablesProcessor`s in ``changefeed status``.

A thousand data sources do not fit on a screen, so the human form is a summary: how many
are in each state, then only those that need a look (quarantined first, then back-filling
and removed, at most `LISTED` of each), the slowest data sources and the slowest domains.
``status --json`` has every data source.
"""

from __future__ import annotations

from rich.console import Console

from changefeed.cli.output import escape, human
from changefeed.processors.reports import SourceState
from changefeed.processors.reports.states import BACKFILLING, QUARANTINED, REMOVED, STATES
from changefeed.report_status import ReportsStatus

LISTED = 20
"""Data sources listed per state before the rest is counted."""
SLOWEST = 5
"""Slowest data sources and domains shown."""


def render_reports(console: Console, report: ReportsStatus) -> None:
    counts = report.counts()
    total = sum(counts.values())
    per_state = ", ".join(f"{counts[state]} {state}" for state in STATES if counts[state])
    console.print(
        f"  report data sources ({escape(report.processor)}): {total}"
        + (f": {per_state}" if per_state else ""),
        markup=False,
        soft_wrap=True,
    )
    for state in (QUARANTINED, BACKFILLING, REMOVED):
        sources = report.in_state(state)
        for source in sources[:LISTED]:
            console.print(f"    {_describe(source)}", markup=False, soft_wrap=True)
        if len(sources) > LISTED:
            console.print(
                f"    ... and {len(sources) - LISTED} more {state} "
                "(all in `status --json` or `changefeed reports list`)",
                markup=False,
                soft_wrap=True,
            )
    slowest = report.slowest_sources(SLOWEST)
    if slowest:
        shown = ", ".join(f"{escape(s.name)} {_seconds(s.counters.seconds)}" for s in slowest)
        console.print(f"    slowest data sources: {shown}", markup=False, soft_wrap=True)
    if report.slowest_domains:
        shown = ", ".join(
            f"{escape(domain or '(none)')} {_seconds(seconds)}"
            for domain, seconds in report.slowest_domains[:SLOWEST]
        )
        console.print(
            f"    slowest domains: {shown} (of {report.domains} domains)",
            markup=False,
            soft_wrap=True,
        )


def _describe(source: SourceState) -> str:
    name, table = escape(source.name), escape(source.table)
    if source.state == QUARANTINED:
        return (
            f"QUARANTINED {name} (table {table}): {human(source.reason) or 'failed'}; "
            f"after fixing it: changefeed reports enable {name}"
        )
    if source.state == BACKFILLING:
        return f"back-filling {name} (table {table}): {source.progress} documents done"
    return f"removed {name} (table {table} kept, no longer written)"


def _seconds(seconds: float) -> str:
    """Enough digits to tell small amounts apart, none to spare on large ones."""
    return f"{seconds:.3f}s" if seconds < 10 else f"{seconds:.0f}s"
