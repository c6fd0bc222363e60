"""Keeps a report table in sync with documents (`ReportTableProcessor`).

For a batch the processor computes every document's rows and hands them to its
`writer.TableWriter`, which writes them in one idempotent transaction. `migrate` brings the
table in line with the config, or marks it for a rebuild into a shadow table that `swap_in`
puts in its place (the table's shape and DDL: `schema`; what it was built from: `definition`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from changefeed.change import Change
from changefeed.db import create_tables, make_engine
from changefeed.errors import bounded
from changefeed.identifiers import sql_identifier
from changefeed.processors.base import (
    BulkProcessor,
    ChangeFailure,
    OutputDrift,
    Rebuildable,
    Shadow,
)
from changefeed.processors.reports.config import (
    SYSTEM_COLUMNS,
    DataSourceConfig,
    Row,
    load_data_source,
)
from changefeed.processors.reports.definition import (
    DefinitionChange,
    compare,
    compare_reflected,
    definition_hash,
    definitions_table,
    normalised,
    read_definition,
    write_definition,
)
from changefeed.processors.reports.schema import (
    ReportSchemaError,
    build_table,
    old_name,
    reflected_kind,
    shadow_name,
    swap_tables,
    sync_indexes,
)
from changefeed.processors.reports.writer import IDS_PER_STATEMENT, TableWriter

__all__ = ["ReportSchemaError", "ReportTableProcessor", "build_table"]

log = logging.getLogger("changefeed.reports")


class _Plan:
    """A batch's writes as computed from its documents: rows to upsert, documents whose
    rows go (deleted, or no longer matching), row counts of multi-row documents, and the
    documents the expressions failed on; for one config and writer."""

    __slots__ = ("by_count", "config", "failures", "gone", "rows", "writer")

    def __init__(self, config: DataSourceConfig, writer: TableWriter) -> None:
        self.config = config
        self.writer = writer
        self.rows: list[Any] = []
        self.gone: list[str] = []
        self.by_count: dict[int, list[str]] = {}
        self.failures: list[ChangeFailure] = []

    def fits(self, processor: ReportTableProcessor) -> bool:
        """Computed for the table the processor writes now (not one swapped out since)."""
        return self.config is processor.config and self.writer is processor._writer


class ReportTableProcessor(BulkProcessor, Rebuildable):
    """A configurable report table (a "data source") fed by a pillow.

    One per data source costs a filter per document and a transaction per batch each: a
    pillow of many data sources takes one `ReportTablesProcessor` instead."""

    def __init__(
        self,
        config: DataSourceConfig | Mapping[str, Any] | str | Path,
        engine: sa.Engine | str,
        *,
        schema: str | None = None,
        table_name: str | None = None,
        lock: threading.RLock | None = None,
    ) -> None:
        """``lock``: the lock batches and swaps take, shared when one `ReportTablesProcessor`
        writes many tables in one batch (a swap then holds off its batches)."""
        if isinstance(config, DataSourceConfig):
            self.config = config
        elif isinstance(config, Mapping):
            self.config = DataSourceConfig.from_dict(config)
        else:
            self.config = load_data_source(config)
        self.engine = make_engine(engine)
        self._postgres = self.engine.dialect.name == "postgresql"
        self.schema = schema
        self.target = self.config
        """The configured data source. `config` is what the table is written with: the same,
        except while a rebuild for a changed definition runs (then the stored old one)."""
        self.table_name = sql_identifier(table_name, "table name") if table_name else None
        """Set for a shadow table: written under this name, no definition kept for it."""
        self.rebuild_needed: DefinitionChange | None = None
        """Set by `migrate` when the definition changed and the table is to be rebuilt."""
        self._writing = lock or threading.RLock()
        self._use(self.config)

    def _use(self, config: DataSourceConfig) -> None:
        """Write the table with ``config`` from now on (the table and its writer)."""
        self.config = config
        self.table = build_table(config, self.schema, self.table_name)
        self._writer = TableWriter(self.engine, self.table)

    @property
    def writer(self) -> TableWriter:
        """The writer of the table as written now (a new one after a swap)."""
        return self._writer

    @property
    def name(self) -> str:
        # Bounded like every name the error queue stores (a long data source name is
        # shortened with a hash suffix, the same way every time).
        return bounded(f"report:{self.config.name}")

    # -- writing -----------------------------------------------------------------------

    def process_changes(self, changes: Sequence[Change]) -> list[ChangeFailure]:
        # Under the lock a swap takes: a batch is written whole to one table, one config.
        with self._writing:
            return self._write(self._plan(changes))

    def prepare_changes(self, changes: Sequence[Change]) -> _Plan:
        """The batch's rows, computed ahead (on a pipelined pillow's reader thread)."""
        return self._plan(changes)

    def process_prepared(self, changes: Sequence[Change], prepared: object) -> list[ChangeFailure]:
        with self._writing:
            plan = prepared
            if not isinstance(plan, _Plan) or not plan.fits(self):
                plan = self._plan(changes)  # the table was swapped since: rows of its config
            return self._write(plan)

    def _plan(self, changes: Sequence[Change]) -> _Plan:
        """Every document's rows for the table as it is written now (config and writer)."""
        latest: dict[str, Change] = {}
        for change in changes:
            latest[change.id] = change
        config, writer = self.config, self._writer
        # PostgreSQL COPYs tuples in column order; SQLite upserts dicts.
        rows_of = config.row_tuples if writer.copies else config.rows
        plan = _Plan(config, writer)
        rows, gone, by_count, failures = plan.rows, plan.gone, plan.by_count, plan.failures
        for doc_id, change in latest.items():
            document = None if change.deleted else change.document
            if document is None:
                gone.append(doc_id)
                continue
            try:
                doc_rows: list[Any] = rows_of(doc_id, document)
            except Exception as exc:  # noqa: BLE001 - a document the expressions cannot handle
                failures.append(ChangeFailure(change, exc, retryable=False))
                continue
            if not doc_rows:
                gone.append(doc_id)
                continue
            rows.extend(doc_rows)
            if config.multi_row:
                by_count.setdefault(len(doc_rows), []).append(doc_id)
        return plan

    def _write(self, plan: _Plan) -> list[ChangeFailure]:
        plan.writer.write(plan.gone, plan.rows, plan.by_count)
        return plan.failures

    # -- schema ------------------------------------------------------------------------

    def bootstrap(self) -> None:
        """Create the table, or check it against the definition it was built with."""
        for action in self.migrate():
            log.info("report %s: %s", self.target.name, action)

    def migrate(self, *, rebuilding: bool = False) -> list[str]:
        """Bring the table in line with the config; returns what was done.

        A new table is created and its definition recorded (`definition`). An existing one
        is compared with the definition it was built with: an index added or dropped is done
        in place; a change of its rows or shape (columns added, removed, retyped, expressions,
        filter) is refused with `ReportSchemaError` naming the change when the config says
        ``auto_rebuild: false``. Otherwise `rebuild_needed` is set for `changefeed.rebuild`,
        and until the swap the table keeps being written with the definition it was built
        with (when this version can read it), so readers see a table that stays current.
        ``rebuilding``: an explicit rebuild follows, so ``auto_rebuild: false`` does not refuse.
        """
        with self._writing:
            if self.table_name is not None:
                return self._create_shadow()
            return self._migrate(rebuilding)

    def _migrate(self, rebuilding: bool) -> list[str]:
        target = self.target
        self._use(target)
        self.rebuild_needed = None
        t = self.table
        inspector = sa.inspect(self.engine)
        if not inspector.has_table(t.name, schema=t.schema):
            with self.engine.begin() as conn:
                create_table(conn, target, self.schema)
            return [f"created table {t.name}"]
        reflected = {c["name"]: c["type"] for c in inspector.get_columns(t.name, schema=t.schema)}
        lacking = [name for name in SYSTEM_COLUMNS if name not in reflected]
        if lacking:
            raise ReportSchemaError(
                f"table {t.name!r} exists but has no {', '.join(lacking)} column: it is not a "
                f"report table of data source {target.name!r}; pick another table name"
            )
        with self.engine.connect() as conn:
            stored = read_definition(conn, t.name, self.schema)
        if stored is not None and stored.hash == definition_hash(target):
            return []
        old: DataSourceConfig | None = None
        if stored is None:
            kinds = {name: reflected_kind(type_) for name, type_ in reflected.items()}
            change = compare_reflected(kinds, target, SYSTEM_COLUMNS)
        else:
            change = compare(stored.definition, normalised(target))
            old = stored.load_config()
        if not change.needs_rebuild:
            wanted = {c.name for c in target.columns if c.index}
            actions = sync_indexes(self.engine, t, inspector, wanted)
            with self.engine.begin() as conn:
                write_definition(conn, target, self.schema)
            return [*actions, "recorded the table's definition"]
        rebuild = f"`changefeed reports rebuild {target.name}`"
        if not target.auto_rebuild and not rebuilding:
            unknown = " (no definition stored: filter not compared)" if change.unknown else ""
            raise ReportSchemaError(
                f"report {target.name!r}: the definition of table {t.name!r} changed "
                f"({change}){unknown} and auto_rebuild is false: rebuild it with {rebuild} "
                "(the table keeps serving until the swap) or set auto_rebuild: true"
            )
        self.rebuild_needed = change
        if old is not None and old.table == target.table:
            self._use(old)
            return [
                f"definition changed ({change}): written with the old definition until "
                f"a rebuild swaps in a new table ({rebuild}, or `changefeed run`)"
            ]
        # The table predates stored definitions: nothing to write it with but the config.
        log.warning(
            "report %s: table %s does not match the config (%s) and has no stored "
            "definition: it must be rebuilt before the pillow writes it (%s)",
            target.name,
            t.name,
            change,
            rebuild,
        )
        return [f"definition changed ({change}): to be rebuilt"]

    def _create_shadow(self) -> list[str]:
        """A shadow table is created when missing; an existing one is an interrupted
        rebuild's, kept to resume into (its name carries the definition's hash)."""
        t = self.table
        if sa.inspect(self.engine).has_table(t.name, schema=t.schema):
            return []
        create_tables(self.engine, t.metadata, [t])
        return [f"created shadow table {t.name}"]

    def reset(self) -> None:
        """Drop and recreate the table empty with the configured definition, for a rebuild
        from the document stores."""
        with self._writing:
            self._use(self.target)
            self.rebuild_needed = None
            self.table.drop(self.engine, checkfirst=True)
            with self.engine.begin() as conn:
                self.table.metadata.create_all(conn, checkfirst=True)
                if self.table_name is None:
                    write_definition(conn, self.target, self.schema)

    # -- rebuilding into a shadow table (``changefeed.rebuild``) ---------------------------

    def shadow(self) -> ReportTableProcessor:
        """A processor of the configured definition writing a shadow table next to this one,
        sharing its engine (do not `close` it). `swap_in` then replaces this table with it."""
        if self.table_name is not None:
            raise ValueError(f"{self.table.name!r} is a shadow table already")
        name = shadow_name(self.target.table, definition_hash(self.target))
        return ReportTableProcessor(self.target, self.engine, schema=self.schema, table_name=name)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold off this processor's batches (they wait for the block to end)."""
        with self._writing:
            yield

    def swap_in(self, shadow: ReportTableProcessor) -> None:
        """Replace this table with the filled ``shadow`` in one transaction: rename live to
        old, shadow to live, drop old, give the indexes their live names and record the new
        definition. Readers of the table see the old table or the new one, never none; this
        processor's batches wait, then write the new table with the configured definition."""
        if shadow.table_name is None or shadow.target.table != self.target.table:
            raise ValueError("swap_in takes this table's shadow (see `shadow`)")
        with self._writing:
            target = self.target
            live = build_table(target, self.schema)
            staged = shadow.table
            old = build_table(target, self.schema, old_name(live.name, definition_hash(target)))
            definitions_table(self.schema).create(self.engine, checkfirst=True)
            swap_tables(self.engine, live, staged, old, target, self.schema)
            self._use(target)
            self.rebuild_needed = None

    # -- the rebuild contract (`Rebuildable`) ----------------------------------------------

    resumable = True  # the shadow table is named after the definition it is filled with

    def prepare_rebuild(self) -> None:
        self.migrate(rebuilding=True)

    def shadow_output(self) -> Shadow:
        return _ShadowTable(self, self.shadow())

    def holding(self) -> AbstractContextManager[None]:
        return self.writing()

    @property
    def pending_rebuild(self) -> str | None:
        return None if self.rebuild_needed is None else str(self.rebuild_needed)

    @property
    def writable_until_rebuilt(self) -> bool:
        # Written with the stored old definition until the swap; without one (a table that
        # predates stored definitions) there is nothing to write it with.
        return self.config is not self.target

    def drop_shadow(self) -> None:
        """Drop a shadow table (an abandoned rebuild)."""
        if self.table_name is None:
            raise ValueError("drop_shadow drops shadow tables only")
        self.table.drop(self.engine, checkfirst=True)

    def count_rows(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(self.table)).scalar_one()
            )

    # -- verification (``changefeed verify``) -------------------------------------------------

    def verify_output(self, changes: Sequence[Change]) -> OutputDrift:
        """Per document, the rows the config makes of the store's document against the
        table's rows: none in the table is missing, none expected is extra, otherwise any
        difference is different. Rows carry no version, so nothing is reported stale; an
        upsert overwrites, so nothing needs clearing before a repair."""
        names = self.table.c.keys()
        expected: dict[str, list[tuple[Any, ...]]] = {}
        for change in changes:
            document = None if change.deleted else change.document
            rows: list[Row] = []
            if document is not None:
                try:
                    rows = self.config.rows(change.id, document)
                except Exception:  # noqa: BLE001 - the pillow parks such a document: no rows
                    rows = []
            expected[change.id] = [tuple(row[n] for n in names) for row in rows]
        actual: dict[str, list[tuple[Any, ...]]] = {}
        ids = list(expected)
        t = self.table
        size = len(ids) or 1 if self._postgres else IDS_PER_STATEMENT
        with self.engine.connect() as conn:
            for start in range(0, len(ids), size):
                chunk = ids[start : start + size]
                if self._postgres:
                    where = t.c.doc_id == sa.any_(
                        sa.bindparam("ids", chunk, type_=postgresql.ARRAY(sa.String))
                    )
                else:
                    where = t.c.doc_id.in_(chunk)
                for row in conn.execute(sa.select(t).where(where)):
                    actual.setdefault(row[0], []).append(tuple(row))
        drift = OutputDrift()
        for doc_id, want in expected.items():
            have = actual.get(doc_id, [])
            if not want and not have:
                continue
            if not have:
                drift.missing.append(doc_id)
            elif not want:
                drift.extra.append(doc_id)
            elif sorted(want, key=_row_num) != sorted(have, key=_row_num):
                drift.different.append(doc_id)
        return drift

    def iter_output_ids(self, chunk_size: int = 1000) -> Iterator[list[str]]:
        """The table's document ids in id order, paged by key along the primary key (no
        DISTINCT: the server would aggregate everything past the key for every page)."""
        t = self.table
        last: str | None = None
        while True:
            query = sa.select(t.c.doc_id).order_by(t.c.doc_id).limit(chunk_size)
            if last is not None:
                query = query.where(t.c.doc_id > last)
            with self.engine.connect() as conn:
                ids = list(dict.fromkeys(row[0] for row in conn.execute(query)))
            if not ids:
                return
            yield ids
            last = ids[-1]

    def close(self) -> None:
        self.engine.dispose()


def create_table(conn: sa.Connection, config: DataSourceConfig, schema: str | None) -> None:
    """Create a data source's table and record its definition, in ``conn``'s transaction
    (so several tables can be created in one)."""
    build_table(config, schema).metadata.create_all(conn, checkfirst=True)
    write_definition(conn, config, schema)


def _row_num(row: tuple[Any, ...]) -> Any:
    return row[1]


class _ShadowTable(Shadow):
    """A shadow table being filled for `ReportTableProcessor.swap_in`."""

    def __init__(self, live: ReportTableProcessor, table: ReportTableProcessor) -> None:
        self.live = live
        self.processor = self.table = table
        self.target = table.table.name

    def swap_in(self) -> None:
        self.live.swap_in(self.table)

    def abandon(self) -> None:
        """Kept: a rebuild of the same definition resumes into it."""
