"""The state of each data source of a `ReportTablesProcessor`, kept in the reports database.

A data source is live (written), back-filling (its table is being filled from the document
stores; written meanwhile), quarantined (skipped after failing again and again, until its
definition changes or ``changefeed reports enable``) or removed (no longer in the provider;
its table kept). The states live in ``changefeed_report_sources`` so that the CLI, in another
process, reads them and changes them, and so that a back-fill a kill interrupted is resumed.

``changefeed_report_control`` holds one counter, the reload generation: ``changefeed reports
reload`` (and ``enable``) bump it, and a running processor that polls it (one indexed read,
at most about once a second) re-reads its provider and the states when it moved.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import sqlalchemy as sa

from changefeed.db import TablesOf, upsert

LIVE = "live"
BACKFILLING = "back-filling"
QUARANTINED = "quarantined"
REMOVED = "removed"
STATES = (LIVE, BACKFILLING, QUARANTINED, REMOVED)

SOURCES_TABLE = "changefeed_report_sources"
CONTROL_TABLE = "changefeed_report_control"
RELOAD = "reload"

_metadata = sa.MetaData()
sources_table = sa.Table(
    SOURCES_TABLE,
    _metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("table_name", sa.String(255), nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("progress", sa.BigInteger, nullable=False, default=0),
    sa.Column("definition_hash", sa.String(64), nullable=False, default=""),
    sa.Column("rows_written", sa.BigInteger, nullable=False, default=0),
    sa.Column("rows_deleted", sa.BigInteger, nullable=False, default=0),
    sa.Column("failures", sa.BigInteger, nullable=False, default=0),
    sa.Column("seconds", sa.Float, nullable=False, default=0.0),
    sa.Column("updated_at", sa.Float, nullable=False),
)
control_table = sa.Table(
    CONTROL_TABLE,
    _metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)


@dataclass(slots=True)
class SourceCounters:
    """What a data source cost and did since the processor started (or, read from the
    database, when its state last changed)."""

    rows_written: int = 0
    rows_deleted: int = 0
    seconds: float = 0.0
    failures: int = 0


@dataclass(slots=True)
class SourceState:
    """One data source: its table, state, back-fill progress (documents done), the reason
    of a quarantine, and its counters."""

    name: str
    table: str
    state: str = LIVE
    progress: int = 0
    reason: str = ""
    definition_hash: str = ""
    counters: SourceCounters = field(default_factory=SourceCounters)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "table": self.table,
            "state": self.state,
            "progress": self.progress,
            "reason": self.reason,
            "rows_written": self.counters.rows_written,
            "rows_deleted": self.counters.rows_deleted,
            "seconds": round(self.counters.seconds, 6),
            "failures": self.counters.failures,
        }


class StateStore(TablesOf):
    """The data source states and the reload generation in a reports database."""

    metadata = _metadata

    def read(self) -> dict[str, SourceState]:
        self.create()
        t = sources_table
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t).order_by(t.c.name)).all()
        return {
            row.name: SourceState(
                row.name,
                row.table_name,
                row.state,
                int(row.progress),
                row.reason,
                row.definition_hash,
                SourceCounters(
                    int(row.rows_written),
                    int(row.rows_deleted),
                    float(row.seconds),
                    int(row.failures),
                ),
            )
            for row in rows
        }

    def save(self, states: list[SourceState]) -> None:
        """Insert or replace these states."""
        if not states:
            return
        self.create()
        now = time.time()
        values = [
            {
                "name": s.name,
                "table_name": s.table,
                "state": s.state,
                "reason": s.reason,
                "progress": s.progress,
                "definition_hash": s.definition_hash,
                "rows_written": s.counters.rows_written,
                "rows_deleted": s.counters.rows_deleted,
                "failures": s.counters.failures,
                "seconds": s.counters.seconds,
                "updated_at": now,
            }
            for s in states
        ]
        with self.engine.begin() as conn:
            upsert(conn, sources_table, values, ["name"])

    def set_state(self, name: str, state: str, reason: str = "") -> bool:
        """Change one data source's state (the CLI's ``enable``); False when unknown."""
        self.create()
        t = sources_table
        with self.engine.begin() as conn:
            done = conn.execute(
                t.update()
                .where(t.c.name == name)
                .values(state=state, reason=reason, updated_at=time.time())
            ).rowcount
        return bool(done)

    def generation(self) -> int:
        """The reload generation (0 before the first reload)."""
        self.create()
        t = control_table
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(t.c.value).where(t.c.key == RELOAD)).scalar()
        return int(value or 0)

    def request_backfill(self, name: str) -> bool:
        """Mark a data source to be back-filled and ask running processors to look
        (``reports rebuild``, ``reports enable``): a running pillow starts at once, and one
        that is stopped finds the state when it starts, so what a quarantined data source
        skipped is filled in either way. False when the data source is unknown."""
        if not self.set_state(name, BACKFILLING):
            return False
        self.request_reload()
        return True

    def request_reload(self) -> int:
        """Bump the reload generation: running processors re-read their data sources."""
        self.create()
        t = control_table
        with self.engine.begin() as conn:
            updated = conn.execute(
                t.update().where(t.c.key == RELOAD).values(value=t.c.value + 1)
            ).rowcount
            if not updated:
                conn.execute(t.insert().values(key=RELOAD, value=1))
            return int(conn.execute(sa.select(t.c.value).where(t.c.key == RELOAD)).scalar_one())
