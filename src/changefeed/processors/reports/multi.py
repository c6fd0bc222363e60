"""One processor for many report data sources (`ReportTablesProcessor`).

A pillow of a thousand `ReportTableProcessor`s runs a thousand filters on every document and
a thousand transactions per batch. This processor instead routes each document through an
index of the filters (`routing`) to the data sources it can reach, and writes every table the
batch touches in one transaction (`writer.write_tables`); an untouched data source costs
nothing. A table whose write fails is found with a savepoint per table and fails alone: its
documents are queued under the data source's name, so a retry writes that data source only
(`for_failure`); one that keeps failing is quarantined. The data sources come from a
provider (`providers`) read again every ``refresh_interval`` and on ``changefeed reports
reload``; their states are kept in the reports database (`states`). Each data source keeps
a `ReportTableProcessor` of its own for its table's schema, shadow rebuild and swap; the
runtime back-fills new and changed ones (`pending_backfill`, `changefeed.rebuild`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from changefeed.change import Change
from changefeed.db import make_engine
from changefeed.errors import bounded
from changefeed.failures import DocumentError
from changefeed.processors.base import (
    Backfilling,
    BulkProcessor,
    ChangeFailure,
    Processor,
    Rebuildable,
)
from changefeed.processors.reports.config import DataSourceConfig
from changefeed.processors.reports.definition import definition_hash, definitions_table
from changefeed.processors.reports.processor import ReportTableProcessor, create_table
from changefeed.processors.reports.providers import (
    ChecksDataSources,
    DataSourceInput,
    DataSourceProvider,
    as_provider,
)
from changefeed.processors.reports.routing import Router
from changefeed.processors.reports.selection import Division, Selection
from changefeed.processors.reports.states import (
    BACKFILLING,
    LIVE,
    QUARANTINED,
    REMOVED,
    SourceCounters,
    SourceState,
    StateStore,
)
from changefeed.processors.reports.writer import TableWrite, write_tables

__all__ = ["DataSourceWriteError", "ReportStats", "ReportTablesProcessor"]

log = logging.getLogger("changefeed.reports")

QUARANTINE_AFTER = 3
"""Batches in a row in which a data source failed before it is quarantined."""

CREATE_PER_TRANSACTION = 50
"""New tables created per transaction (each holds locks on its table and indexes)."""

CHANGES_PER_SOURCE = 5
"""Changes per data source that a pillow given no ``batch_size`` collects in a batch (at
least its default, at most `MAX_BATCH_HINT`): a batch costs about one statement per table it
touches, so a thousand data sources over a thousand domains take a batch of 5,000 changes to
write as cheaply per document as one data source (docs/benchmarks.md)."""

MAX_BATCH_HINT = 10_000
"""The largest batch the processor asks for (memory: a batch's documents are held)."""


class DataSourceWriteError(DocumentError):
    """A data source's table could not be written (its documents are queued under its
    name); a document error, so the pillow moves on with the other data sources."""


@dataclass(slots=True)
class ReportStats:
    """Counters since the processor started: per data source, and seconds per ``domain``
    (row building plus its share of the writes; the slowest domains first in `slowest`)."""

    sources: dict[str, SourceCounters] = field(default_factory=dict)
    domain_seconds: dict[str, float] = field(default_factory=dict)

    def slowest(self, n: int = 10) -> list[tuple[str, float]]:
        return sorted(self.domain_seconds.items(), key=lambda kv: -kv[1])[:n]


class _Source:
    """A data source as the processor holds it: its table's processor and its state."""

    __slots__ = (
        "counters",
        "failing",
        "hash",
        "member",
        "name",
        "progress",
        "reason",
        "state",
        "where",
    )

    def __init__(self, member: ReportTableProcessor, state: str) -> None:
        self.member = member
        self.name = member.target.name
        self.hash = definition_hash(member.target)
        self.where = member.name
        self.state = state
        self.reason = ""
        self.progress = 0
        self.failing = 0
        self.counters = SourceCounters()

    def snapshot(self) -> SourceState:
        return SourceState(
            self.name,
            self.member.target.table,
            self.state,
            self.progress,
            self.reason,
            self.hash,
            replace(self.counters),
        )


class _Part:
    """One data source's part of a batch."""

    __slots__ = (
        "by_count",
        "changes",
        "config",
        "failures",
        "gone",
        "rows",
        "rows_of",
        "source",
        "writer",
    )

    def __init__(self, source: _Source) -> None:
        self.source = source
        self.config = source.member.config
        self.writer = source.member.writer
        # PostgreSQL's writer takes tuples in column order; SQLite's upsert takes dicts.
        self.rows_of = self.config.row_tuples if self.writer.copies else self.config.rows
        self.rows: list[Any] = []
        self.gone: list[str] = []
        self.by_count: dict[int, list[str]] = {}
        self.changes: list[Change] = []
        self.failures: list[ChangeFailure] = []

    def fits(self) -> bool:
        member = self.source.member
        return self.config is member.config and self.writer is member.writer


class _Plan:
    """A batch's parts by data source, with where the time went."""

    __slots__ = ("domain_rows", "domain_seconds", "parts", "router")

    def __init__(self, router: Router[_Source]) -> None:
        self.router = router
        self.parts: dict[str, _Part] = {}
        self.domain_seconds: defaultdict[str, float] = defaultdict(float)
        self.domain_rows: defaultdict[str, int] = defaultdict(int)


class ReportTablesProcessor(BulkProcessor, Backfilling):
    """Many report data sources in one processor; see the module docstring.

    ``data_sources``: a `DataSourceProvider`, a directory of ``.yaml``/``.yml``/``.json``
    files, or a list of configs, dicts and file paths. ``include``/``exclude``/``division``
    select a part of them (`selection`). ``drop_removed``: drop the table of a data source
    that left the provider (else it is kept and no longer written)."""

    def __init__(
        self,
        data_sources: DataSourceProvider | Sequence[DataSourceInput] | str | Path,
        engine: sa.Engine | str,
        *,
        refresh_interval: float = 60.0,
        include: Iterable[str] | None = None,
        exclude: Iterable[str] | None = None,
        division: str | Division | None = None,
        drop_removed: bool = False,
        schema: str | None = None,
        quarantine_after: int = QUARANTINE_AFTER,
        poll_interval: float = 1.0,
        backfill_chunk_size: int = 1000,
        name: str = "reports",
    ) -> None:
        self.provider = as_provider(data_sources)
        self.engine = make_engine(engine)
        self.selection = Selection.of(include, exclude, division)
        self.refresh_interval = refresh_interval
        self.poll_interval = poll_interval
        self.drop_removed = drop_removed
        self.schema = schema
        self.quarantine_after = quarantine_after
        self.backfill_chunk_size = backfill_chunk_size
        self._name = name
        self.states = StateStore(self.engine)
        self._lock = threading.RLock()
        self._sources: dict[str, _Source] = {}
        self._by_where: dict[str, _Source] = {}
        self._router: Router[_Source] = Router(())
        self._loaded = False
        self._generation = -1
        self._next_poll = 0.0
        self._next_refresh = 0.0
        self._claimed: set[str] = set()
        self._built: dict[str, str] | None = None
        self._domain_seconds: defaultdict[str, float] = defaultdict(float)
        self.backfill_wanted = threading.Event()
        """Set when a data source is to be back-filled (`pending_backfill`)."""

    @property
    def name(self) -> str:
        return self._name

    # -- the data sources ----------------------------------------------------------------

    @property
    def batch_size_hint(self) -> int | None:
        """`CHANGES_PER_SOURCE` per data source taken (read from the provider when none is
        loaded yet; None when it cannot be read: the pillow's default then)."""
        try:
            count = len(self._sources) if self._loaded else len(self.selected())
        except Exception:  # noqa: BLE001 - the provider's trouble shows at bootstrap
            return None
        return min(MAX_BATCH_HINT, CHANGES_PER_SOURCE * count) or None

    def invalid_data_sources(self) -> dict[str, str]:
        """The data sources its provider skipped because they do not validate (by file or
        row, with the error); empty for a provider that fails instead (`ChecksDataSources`)."""
        if isinstance(self.provider, ChecksDataSources):
            return self.provider.invalid_data_sources()
        return {}

    def selected(self) -> list[DataSourceConfig]:
        """The provider's data sources this processor takes (its selection)."""
        return [c for c in self.provider.get_data_sources() if self.selection.selects(c)]

    def bootstrap(self) -> None:
        """Load the data sources, create their tables and states."""
        self.refresh()

    def poll(self) -> None:
        """Refresh when due: every ``refresh_interval``, or when ``changefeed reports
        reload`` moved the reload generation (read at most every ``poll_interval``). One
        clock read per call otherwise: it runs before every batch."""
        now = time.monotonic()
        if now < self._next_poll and self._loaded:
            return
        with self._lock:
            self._next_poll = now + self.poll_interval
            generation = self.states.generation()
            if not self._loaded or generation != self._generation or now >= self._next_refresh:
                self.refresh()

    def refresh(self) -> list[str]:
        """Read the provider and the stored states again and apply what changed: added
        data sources get a table (to back-fill), changed ones are rebuilt, removed ones are
        no longer written, enabled ones come back. Returns what was done. A provider that
        fails to read leaves everything as it was (logged), except at the first load: a
        pillow does not start without its data sources."""
        with self._lock:
            self._generation = self.states.generation()
            self._next_refresh = time.monotonic() + self.refresh_interval
            try:
                configs = self.selected()
            except Exception as exc:
                if not self._loaded:
                    raise
                # A bad edit must not stop the pillow: the data sources stay as they were.
                log.error("reports %s: cannot read the data sources: %s", self.name, exc)
                return [f"not refreshed: {exc}"]
            stored = self.states.read()
            first = not self._loaded and not stored
            self._built = None
            actions: list[str] = []
            seen = set()
            created = self._create_tables([c for c in configs if self._needs_table(c)])
            for config in configs:
                seen.add(config.name)
                action = self._apply(config, stored.get(config.name), first, created)
                if action:
                    actions.append(action)
            for source in self._sources.values():
                if source.name not in seen and source.state != REMOVED:
                    actions.append(self._remove(source))
            self._loaded = True
            self._reroute()
            snapshots = [s.snapshot() for s in self._sources.values()]
            self.states.save([s for s in snapshots if s != stored.get(s.name)])
            for action in actions:
                log.info("reports %s: %s", self.name, action)
            return actions

    def _current(self, config: DataSourceConfig) -> _Source | None:
        """The data source of ``config``, when held with this very definition."""
        source = self._sources.get(config.name)
        if (
            source is not None
            and source.state != REMOVED
            and source.hash == definition_hash(config)
        ):
            return source
        return None

    def _needs_table(self, config: DataSourceConfig) -> bool:
        return self._current(config) is None and config.table not in self._built_tables()

    def _create_tables(self, configs: list[DataSourceConfig]) -> set[str]:
        """Create the tables of data sources that have none, `CREATE_PER_TRANSACTION` in
        a transaction (a thousand new data sources: twenty commits, not a thousand, and not
        one holding thousands of locks); returns their names."""
        for start in range(0, len(configs), CREATE_PER_TRANSACTION):
            with self.engine.begin() as conn:
                for config in configs[start : start + CREATE_PER_TRANSACTION]:
                    create_table(conn, config, self.schema)
        built = self._built_tables()
        for config in configs:
            built[config.table] = definition_hash(config)
        return {config.table for config in configs}

    def _apply(
        self, config: DataSourceConfig, stored: SourceState | None, first: bool, fresh: set[str]
    ) -> str:
        source = self._current(config)
        wanted = definition_hash(config)
        if source is not None:
            if source.state == QUARANTINED and stored and stored.state != QUARANTINED:
                self._backfill(source, "")
                return f"{config.name}: enabled, back-filling what it skipped"
            if source.state == LIVE and stored and stored.state == BACKFILLING:
                self._backfill(source, "")  # ``changefeed reports rebuild NAME``
                return f"{config.name}: rebuild requested, back-filling"
            return ""
        member = ReportTableProcessor(config, self.engine, schema=self.schema, lock=self._lock)
        # A table built with this very definition needs no migration: known from one read
        # for all data sources, so a restart with a thousand costs no thousand inspections.
        built = self._built_tables()
        done = [] if built.get(config.table) == wanted else member.migrate(rebuilding=True)
        created = config.table in fresh or any(a.startswith("created table") for a in done)
        source = _Source(member, LIVE)
        if source.where in self._by_where and self._by_where[source.where].name != config.name:
            raise ValueError(f"data sources {config.name!r} and another share a bounded name")
        self._sources[config.name] = source
        self._by_where[source.where] = source
        if member.rebuild_needed is not None:
            self._backfill(source, "")
            return f"{config.name}: definition changed ({member.rebuild_needed}), rebuilding"
        same = stored is not None and stored.definition_hash == wanted
        if same and stored is not None and stored.state in (BACKFILLING, QUARANTINED):
            source.state, source.reason = stored.state, stored.reason
            source.progress = stored.progress
            if stored.state == BACKFILLING:
                self.backfill_wanted.set()
            return f"{config.name}: {stored.state}"
        if created and not first:
            self._backfill(source, "")
            return f"{config.name}: added, table {member.table.name} created, back-filling"
        return f"{config.name}: live" + (f" ({'; '.join(done)})" if done else "")

    def _built_tables(self) -> dict[str, str]:
        """Per existing table, the hash of the definition it was built with ("" when none
        is stored); read once per refresh (``_built``), when a data source needs a table."""
        if self._built is None:
            t = definitions_table(self.schema)
            names = sa.inspect(self.engine).get_table_names(schema=self.schema)
            self._built = dict.fromkeys(names, "")
            if t.name in self._built:
                with self.engine.connect() as conn:
                    rows = conn.execute(sa.select(t.c.table_name, t.c.definition_hash)).all()
                self._built.update((table, h) for table, h in rows if table in self._built)
        return self._built

    def _backfill(self, source: _Source, reason: str) -> None:
        source.state, source.reason, source.progress, source.failing = BACKFILLING, reason, 0, 0
        self.backfill_wanted.set()

    def _remove(self, source: _Source) -> str:
        source.state = REMOVED
        if self.drop_removed:
            source.member.table.drop(self.engine, checkfirst=True)
            return f"{source.name}: removed, table {source.member.table.name} dropped"
        return f"{source.name}: removed (table {source.member.table.name} kept)"

    def _reroute(self) -> None:
        active = [s for s in self._sources.values() if s.state in (LIVE, BACKFILLING)]
        self._router = Router((s.member.target.spec.get("filter"), s) for s in active)

    def data_source_states(self) -> list[SourceState]:
        """Every data source this processor knows: state, back-fill progress, quarantine
        reason and counters."""
        with self._lock:
            return [s.snapshot() for s in self._sources.values()]

    def stats(self) -> ReportStats:
        with self._lock:
            return ReportStats(
                {name: replace(s.counters) for name, s in self._sources.items()},
                dict(self._domain_seconds),
            )

    def enable(self, name: str) -> bool:
        """Lift a quarantine here and now (``changefeed reports enable`` does it through
        the database); the data source is back-filled. False when it is not quarantined."""
        with self._lock:
            source = self._sources.get(name)
            if source is None or source.state != QUARANTINED:
                return False
            self._backfill(source, "")
            self._reroute()
            self.states.save([source.snapshot()])
            return True

    # -- back-fills, run by the runtime (``changefeed.rebuild.Backfiller``) ----------------

    def pending_backfill(self) -> Rebuildable | None:
        """A data source to back-fill (claimed: not handed out again until
        `backfill_done`), as its table's processor for a shadow rebuild; None when none."""
        with self._lock:
            for source in self._sources.values():
                if source.state == BACKFILLING and source.name not in self._claimed:
                    self._claimed.add(source.name)
                    return source.member
            self.backfill_wanted.clear()
            return None

    def backfill_progress(self, part: Rebuildable, done: int) -> None:
        """A back-fill went through ``done`` changes (saved, for ``reports list``)."""
        source = self._sources.get(_source_name(part))
        if source is not None and source.state == BACKFILLING:
            source.progress = done
            self.states.save([source.snapshot()])

    def backfill_done(self, part: Rebuildable, finished: bool) -> None:
        """The back-fill of ``part`` ended: live when ``finished`` and the data source was
        not changed meanwhile; else it is handed out again."""
        with self._lock:
            name = _source_name(part)
            self._claimed.discard(name)
            source = self._sources.get(name)
            if source is None or source.member is not part or source.state != BACKFILLING:
                return
            if finished:
                source.state = LIVE
                self.states.save([source.snapshot()])
            else:
                self.backfill_wanted.set()

    # -- writing -----------------------------------------------------------------------

    def process_changes(self, changes: Sequence[Change]) -> list[ChangeFailure]:
        self.poll()
        with self._lock:
            return self._write(self._plan(changes, self._router))

    def prepare_changes(self, changes: Sequence[Change]) -> _Plan:
        return self._plan(changes, self._router)

    def process_prepared(self, changes: Sequence[Change], prepared: object) -> list[ChangeFailure]:
        self.poll()
        with self._lock:
            plan = prepared
            if (
                not isinstance(plan, _Plan)
                or plan.router is not self._router
                or not all(p.fits() for p in plan.parts.values())
            ):
                plan = self._plan(changes, self._router)
            return self._write(plan)

    def _plan(
        self, changes: Sequence[Change], router: Router[_Source], only: _Source | None = None
    ) -> _Plan:
        latest: dict[str, Change] = {}
        for change in changes:
            latest[change.id] = change
        plan = _Plan(router)
        parts = plan.parts
        clock = time.perf_counter
        for doc_id, change in latest.items():
            document = None if change.deleted else change.document
            if document is None:
                gone_from = [only] if only else router.candidates_of_deletion(change.metadata)
                for source in gone_from:
                    part = parts.get(source.name) or parts.setdefault(source.name, _Part(source))
                    part.gone.append(doc_id)
                    part.changes.append(change)
                continue
            candidates = [only] if only else router.candidates(document)
            if not candidates:
                continue
            started = clock()
            written = 0
            for source in candidates:
                part = parts.get(source.name) or parts.setdefault(source.name, _Part(source))
                try:
                    doc_rows: list[Any] = part.rows_of(doc_id, document)
                except Exception as exc:  # noqa: BLE001 - a document the expressions refuse
                    part.failures.append(ChangeFailure(change, exc, False, source.where))
                    continue
                part.changes.append(change)
                if not doc_rows:
                    part.gone.append(doc_id)
                    continue
                part.rows += doc_rows
                written += len(doc_rows)
                if part.config.multi_row:
                    part.by_count.setdefault(len(doc_rows), []).append(doc_id)
            domain = change.metadata.domain if change.metadata else None
            domain = domain or str(document.get("domain") or "")
            plan.domain_seconds[domain] += clock() - started
            plan.domain_rows[domain] += written
        return plan

    def _write(self, plan: _Plan) -> list[ChangeFailure]:
        started = time.perf_counter()
        writes = [
            TableWrite(name, part.writer, part.gone, part.rows, part.by_count)
            for name, part in plan.parts.items()
            if part.gone or part.rows
        ]
        failed = write_tables(self.engine, writes)
        seconds = time.perf_counter() - started
        failures: list[ChangeFailure] = []
        total_rows = sum(len(w.rows) + len(w.gone) for w in writes) or 1
        quarantined = []
        for name, part in plan.parts.items():
            source = part.source
            counters = source.counters
            share = seconds * (len(part.rows) + len(part.gone)) / total_rows
            counters.seconds += share
            failures.extend(part.failures)
            error = failed.get(name)
            if error is not None:
                wrapped = DataSourceWriteError(
                    f"data source {source.name!r}: table {part.writer.table.name}: "
                    f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                )
                wrapped.__cause__ = error
                failures.extend(ChangeFailure(c, wrapped, True, source.where) for c in part.changes)
            counters.failures += len(part.failures) + (len(part.changes) if error else 0)
            if error is None and part.changes:
                counters.rows_written += len(part.rows)
                counters.rows_deleted += len(part.gone)
                source.failing = 0
            else:
                # Its table failed, or every document it got did: the data source's own
                # trouble. A document its expressions refuse among others that work is that
                # document's (queued alone, above), no reason to stop the data source.
                source.failing += 1
                if source.failing >= self.quarantine_after and source.state != QUARANTINED:
                    reason = str(error or part.failures[-1].exception).splitlines()
                    source.state = QUARANTINED
                    source.reason = bounded(reason[0] if reason else "failed", 500)
                    quarantined.append(source)
        domains = self._domain_seconds
        for domain, spent in plan.domain_seconds.items():
            domains[domain] += spent + seconds * plan.domain_rows[domain] / total_rows
        if quarantined:
            for source in quarantined:
                log.error(
                    "reports %s: data source %s quarantined after %d failing batches: %s",
                    self.name,
                    source.name,
                    source.failing,
                    source.reason,
                )
            self._reroute()
            self.states.save([s.snapshot() for s in quarantined])
        return failures

    # -- retrying one data source's entries ------------------------------------------------

    def for_failure(self, where: str) -> Processor | None:
        if not self._loaded:  # a retry in a process of its own: the pillow never ran here
            self.refresh()
        source = self._by_where.get(where)
        if source is None or source.state == REMOVED:
            return None
        return _OneSource(self, source.name)

    def process_for(self, name: str, changes: Sequence[Change]) -> list[ChangeFailure]:
        """Write ``changes`` to data source ``name`` only (whatever the routing says)."""
        with self._lock:
            source = self._sources[name]
            return self._write(self._plan(changes, self._router, only=source))

    def close(self) -> None:
        self.engine.dispose()


class _OneSource(BulkProcessor):
    """One data source of a `ReportTablesProcessor`, for the retry of its queued entries."""

    def __init__(self, parent: ReportTablesProcessor, source: str) -> None:
        self.parent = parent
        self.source = source

    @property
    def name(self) -> str:
        return bounded(f"report:{self.source}")

    def process_changes(self, changes: Sequence[Change]) -> list[ChangeFailure]:
        return self.parent.process_for(self.source, changes)


def _source_name(part: Rebuildable) -> str:
    """The data source whose table ``part`` writes (one `pending_backfill` handed out)."""
    if not isinstance(part, ReportTableProcessor):
        raise TypeError(f"{part.name} is not a data source's table")
    return part.target.name
