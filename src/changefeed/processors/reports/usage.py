"""Where a `ReportTablesProcessor`'s time goes, kept in the reports database.

The processor counts in memory what each data source wrote, deleted, failed and cost, and
the seconds spent per ``domain`` (`ReportStats`). ``changefeed status``, the dashboard and the
metrics exporter run in other processes, so the pillow adds what it counted since its last
flush to ``changefeed_report_usage`` every few seconds (`changefeed.report_usage`). Rows are
incremented, never overwritten: the processes of a pillow split over several add up, and
the totals outlive restarts. One row per (pillow, processor, data source) and per domain, so
the table grows with the data sources and domains, never with time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from changefeed.db import TablesOf
from changefeed.errors import bounded
from changefeed.processors.reports.states import SourceCounters

USAGE_TABLE = "changefeed_report_usage"
DATA_SOURCE = "data_source"
DOMAIN = "domain"
NAME_LENGTH = 255
"""Longest data source or domain name stored (a domain comes from documents: bounded)."""

_metadata = sa.MetaData()
usage_table = sa.Table(
    USAGE_TABLE,
    _metadata,
    sa.Column("pillow", sa.String(255), primary_key=True),
    sa.Column("processor", sa.String(255), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("name", sa.String(NAME_LENGTH), primary_key=True),
    sa.Column("rows_written", sa.BigInteger, nullable=False, default=0),
    sa.Column("rows_deleted", sa.BigInteger, nullable=False, default=0),
    sa.Column("failures", sa.BigInteger, nullable=False, default=0),
    sa.Column("seconds", sa.Float, nullable=False, default=0.0),
    sa.Column("updated_at", sa.Float, nullable=False),
)
_COUNTERS = ("rows_written", "rows_deleted", "failures", "seconds")


@dataclass(slots=True)
class Usage:
    """A pillow's totals: per data source, and seconds per domain."""

    sources: dict[str, SourceCounters]
    domain_seconds: dict[str, float]

    def slowest_domains(self, n: int) -> list[tuple[str, float]]:
        return sorted(self.domain_seconds.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


class UsageStore(TablesOf):
    """The usage table of one reports database."""

    metadata = _metadata

    def add(
        self,
        pillow: str,
        processor: str,
        sources: Mapping[str, SourceCounters],
        domain_seconds: Mapping[str, float],
    ) -> None:
        """Add these amounts to the stored totals, in one transaction."""
        now = time.time()
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for name, c in sources.items():
            rows[(DATA_SOURCE, name)] = {
                "rows_written": c.rows_written,
                "rows_deleted": c.rows_deleted,
                "failures": c.failures,
                "seconds": c.seconds,
            }
        for domain, seconds in domain_seconds.items():
            key = (DOMAIN, bounded(domain, NAME_LENGTH))
            row = rows.setdefault(key, dict.fromkeys(_COUNTERS, 0))
            row["seconds"] += seconds
        if not rows:
            return
        self.create()
        values = [
            {
                "pillow": pillow,
                "processor": processor,
                "kind": kind,
                "name": name,
                **amounts,
                "updated_at": now,
            }
            for (kind, name), amounts in rows.items()
        ]
        with self.engine.begin() as conn:
            _increment(conn, values)

    def read(self, pillow: str, processor: str) -> Usage:
        self.create()
        t = usage_table
        query = sa.select(t).where(t.c.pillow == pillow, t.c.processor == processor)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        usage = Usage({}, {})
        for row in rows:
            if row.kind == DOMAIN:
                usage.domain_seconds[row.name] = float(row.seconds)
            elif row.kind == DATA_SOURCE:
                usage.sources[row.name] = SourceCounters(
                    int(row.rows_written),
                    int(row.rows_deleted),
                    float(row.seconds),
                    int(row.failures),
                )
        return usage


def _increment(conn: sa.Connection, values: list[dict[str, Any]]) -> None:
    """Insert the rows, or add their counters to the stored ones (SQLite and PostgreSQL)."""
    from sqlalchemy.dialects import postgresql, sqlite

    t = usage_table
    stmt: Any = sqlite.insert(t) if conn.dialect.name == "sqlite" else postgresql.insert(t)
    added = {c: t.c[c] + stmt.excluded[c] for c in _COUNTERS}
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["pillow", "processor", "kind", "name"],
            set_={**added, "updated_at": stmt.excluded.updated_at},
        ),
        values,
    )
