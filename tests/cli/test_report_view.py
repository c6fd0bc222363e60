"""The human summary of a thousand data sources stays a screenful."""

from __future__ import annotations

import io

from rich.console import Console

from changefeed.cli.report_view import LISTED, render_reports
from changefeed.processors.reports import SourceCounters, SourceState
from changefeed.report_status import ReportsStatus


def render(report: ReportsStatus) -> list[str]:
    out = io.StringIO()
    render_reports(Console(file=out, width=300), report)
    return out.getvalue().splitlines()


def test_a_thousand_data_sources() -> None:
    sources = [
        SourceState(f"ds-{i:04d}", f"report_{i:04d}", counters=SourceCounters(seconds=i / 1000))
        for i in range(1000)
    ]
    for s in sources[:25]:
        s.state, s.reason = "quarantined", "no such table\x1b[31m"
    sources[30].state, sources[30].progress = "back-filling", 1200
    sources[40].state = "removed"
    report = ReportsStatus("p", "reports", sources, [("slow", 95.4), ("", 0.1)], 700)
    lines = render(report)
    assert lines[0] == (
        "  report data sources (reports): 1000: 973 live, 1 back-filling, 25 quarantined, 1 removed"
    )
    assert sum("QUARANTINED" in line for line in lines) == LISTED
    assert "... and 5 more quarantined" in "\n".join(lines)
    assert "    back-filling ds-0030 (table report_0030): 1200 documents done" in lines
    assert "    removed ds-0040 (table report_0040 kept, no longer written)" in lines
    assert "    slowest data sources: ds-0999 0.999s, ds-0998 0.998s" in lines[-2]
    assert lines[-1] == "    slowest domains: slow 95s, (none) 0.100s (of 700 domains)"
    assert "\x1b" not in "\n".join(lines)  # a reason from a driver cannot drive the terminal
    assert len(lines) < 30


def test_nothing_recorded_yet() -> None:
    lines = render(ReportsStatus("p", "reports", [SourceState("a", "t")]))
    assert lines == ["  report data sources (reports): 1: 1 live"]
