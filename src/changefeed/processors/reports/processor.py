"""Keeps a report table in sync with documents: one transaction of multi-row writes per batch.

For a batch the processor computes every document's rows, then in one transaction deletes
the rows of documents that were deleted or stopped matching the filter, upserts the new rows
by (doc_id, row_num), and, for data sources that emit several rows per document, deletes the
rows beyond each document's new row count. Replaying a batch writes the same rows again, so
the processor is idempotent as the pillow contract requires.

On PostgreSQL (psycopg 3) the batch is COPYed into a temporary table and upserted with one
``INSERT .. SELECT .. ON CONFLICT``: a fixed statement (compiled once, whatever the batch
size) after the fastest bulk load the server has. SQLite gets an ``executemany`` upsert.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from psycopg.types.json import Jsonb
from sqlalchemy.dialects import postgresql

from changefeed.change import Change
from changefeed.db import make_engine, upsert
from changefeed.errors import bounded
from changefeed.identifiers import sql_identifier
from changefeed.processors.base import BulkProcessor, ChangeFailure, OutputDrift
from changefeed.processors.reports.config import (
    DOC_ID,
    ROW_NUM,
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

log = logging.getLogger("changefeed.reports")

_CHUNK = 500
"""Ids per DELETE on dialects that expand IN lists into parameters (SQLite's limit)."""


class ReportSchemaError(RuntimeError):
    """The existing table cannot be brought in line with the config without losing data."""


# Config column types by the generic SQLAlchemy class each database reflects them as
# (subclasses first: Float is a Numeric, DateTime is not a Date).
_KINDS: tuple[tuple[type[sa.types.TypeEngine[Any]], str], ...] = (
    (sa.Boolean, "boolean"),
    (sa.JSON, "json"),
    (sa.DateTime, "datetime"),
    (sa.Date, "date"),
    (sa.Integer, "integer"),
    (sa.Float, "float"),
    (sa.Numeric, "decimal"),
    (sa.String, "string"),
)


def reflected_kind(type_: Any) -> str | None:
    """The config column type a reflected database type stores (None: not one of ours)."""
    for cls, kind in _KINDS:
        if isinstance(type_, cls):
            return kind
    return None


def column_type(kind: str) -> sa.types.TypeEngine[Any]:
    types: dict[str, sa.types.TypeEngine[Any]] = {
        "string": sa.Text(),
        "integer": sa.BigInteger(),
        "float": sa.Float(),
        "decimal": sa.Numeric(),
        "boolean": sa.Boolean(),
        "date": sa.Date(),
        "datetime": sa.DateTime(),
        "json": sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
    }
    return types[kind]


_MAX_NAME = 63
"""PostgreSQL's identifier length; longer generated names get a hash instead."""


def _short(name: str, prefix: str, key: str) -> str:
    if len(name) <= _MAX_NAME:
        return name
    return f"{prefix}_{hashlib.sha1(key.encode()).hexdigest()[:24]}"


def pk_name(table: str) -> str:
    """The primary key's name for a table (PostgreSQL's own default when it fits)."""
    return _short(f"{table}_pkey", "pk", table)


def index_name(table: str, column: str) -> str:
    """A column index's name for a table (SQLAlchemy's own default when it fits). Index names
    are per schema, not per table, so a shadow table's indexes are named after the shadow and
    renamed when it is swapped in."""
    return _short(f"ix_{table}_{column}", "ix", f"{table}.{column}")


def shadow_name(table: str, target_hash: str) -> str:
    """The table a rebuild fills next to ``table``; the same for the same target definition,
    so an interrupted rebuild resumes into it."""
    return f"{table[:36]}__shadow_{target_hash[:8]}"


def old_name(table: str, target_hash: str) -> str:
    """The name the live table has for a moment inside the swap, before it is dropped."""
    return f"{table[:36]}__old_{target_hash[:8]}"


def build_table(
    config: DataSourceConfig, schema: str | None = None, name: str | None = None
) -> sa.Table:
    """The SQLAlchemy table of a data source: system columns first, then the configured ones
    (``name``: another table of the same shape, e.g. a shadow table)."""
    table = name or config.table
    return sa.Table(
        table,
        sa.MetaData(schema=sql_identifier(schema, "schema") if schema else None),
        sa.Column(DOC_ID, sa.String(255), nullable=False),
        sa.Column(ROW_NUM, sa.Integer, nullable=False, autoincrement=False),
        *(sa.Column(c.name, column_type(c.type), nullable=True) for c in config.columns),
        sa.PrimaryKeyConstraint(DOC_ID, ROW_NUM, name=pk_name(table)),
        *(sa.Index(index_name(table, c.name), c.name) for c in config.columns if c.index),
    )


class ReportTableProcessor(BulkProcessor):
    """A configurable report table (a "data source") fed by a pillow."""

    def __init__(
        self,
        config: DataSourceConfig | Mapping[str, Any] | str | Path,
        engine: sa.Engine | str,
        *,
        schema: str | None = None,
        table_name: str | None = None,
    ) -> None:
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
        self._writing = threading.RLock()
        self._use(self.config)

    def _use(self, config: DataSourceConfig) -> None:
        """Write the table with ``config`` from now on (the table and staging statements)."""
        self.config = config
        self.table = build_table(config, self.schema, self.table_name)
        # The staging table of this exact schema: a new name whenever the columns change.
        signature = repr([(c.name, str(c.type)) for c in self.table.columns]) + self.table.name
        self._stage = sa.Table(
            f"cf_stage_{hashlib.sha1(signature.encode()).hexdigest()[:16]}",
            sa.MetaData(),
            *(sa.Column(c.name, c.type) for c in self.table.columns),
        )
        self._upsert_stmt = self._pg_upsert() if self._postgres else None

    @property
    def name(self) -> str:
        # Bounded like every name the error queue stores (a long data source name is
        # shortened with a hash suffix, the same way every time).
        return bounded(f"report:{self.config.name}")

    # -- writing -----------------------------------------------------------------------

    def process_changes(self, changes: Sequence[Change]) -> list[ChangeFailure]:
        # Under the lock a swap takes: a batch is written whole to one table, one config.
        with self._writing:
            return self._process_changes(changes)

    def _process_changes(self, changes: Sequence[Change]) -> list[ChangeFailure]:
        latest: dict[str, Change] = {}
        for change in changes:
            latest[change.id] = change
        config = self.config
        # PostgreSQL COPYs tuples in column order; SQLite upserts dicts.
        rows_of = config.row_tuples if self._upsert_stmt is not None else config.rows
        rows: list[Any] = []
        gone: list[str] = []
        by_count: dict[int, list[str]] = {}
        failures: list[ChangeFailure] = []
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
        with self.engine.begin() as conn:
            try:
                self._delete(conn, gone)
                self._upsert(conn, rows)
                for count, ids in by_count.items():
                    self._delete(conn, ids, from_row=count)
            except BaseException:
                # the rollback also undoes a staging table created in this transaction
                conn.connection.info.pop(self._stage.name, None)
                raise
        return failures

    def _delete(self, conn: sa.Connection, ids: list[str], from_row: int = 0) -> None:
        """Delete the rows of ``ids`` (only those numbered ``from_row`` and up)."""
        if not ids:
            return
        t = self.table
        if self._postgres:
            where = t.c.doc_id == sa.any_(sa.bindparam("ids", type_=postgresql.ARRAY(sa.String)))
            stmt = t.delete().where(where)
            if from_row:
                stmt = stmt.where(t.c.row_num >= from_row)
            conn.execute(stmt, {"ids": ids})
            return
        for start in range(0, len(ids), _CHUNK):
            stmt = t.delete().where(t.c.doc_id.in_(ids[start : start + _CHUNK]))
            if from_row:
                stmt = stmt.where(t.c.row_num >= from_row)
            conn.execute(stmt)

    def _pg_upsert(self) -> sa.Insert:
        """INSERT INTO t SELECT * FROM stage ON CONFLICT (doc_id, row_num) DO UPDATE."""
        t = self.table
        stmt = postgresql.insert(t).from_select(
            [c.name for c in t.columns], sa.select(*(self._stage.c[c.name] for c in t.columns))
        )
        return stmt.on_conflict_do_update(
            index_elements=[t.c.doc_id, t.c.row_num],
            set_={c.name: stmt.excluded[c.name] for c in t.columns if c.name not in SYSTEM_COLUMNS},
        )

    def _upsert(self, conn: sa.Connection, rows: list[Any]) -> None:
        """Upsert the rows: dicts (`DataSourceConfig.rows`) on SQLite, tuples in column
        order (`DataSourceConfig.row_tuples`) on PostgreSQL."""
        if not rows:
            return
        if self._upsert_stmt is None:
            upsert(conn, self.table, rows, list(SYSTEM_COLUMNS))
            return
        # PostgreSQL: COPY the batch into a temporary table emptied at commit, then one
        # INSERT .. SELECT .. ON CONFLICT (the fastest way to upsert many rows).
        preparer = self.engine.dialect.identifier_preparer
        info = conn.connection.info  # lives as long as the pooled connection
        if self._stage.name not in info:
            conn.execute(
                sa.text(
                    f"CREATE TEMPORARY TABLE IF NOT EXISTS {preparer.quote(self._stage.name)} "
                    f"(LIKE {preparer.format_table(self.table)}) ON COMMIT DELETE ROWS"
                )
            )
            info[self._stage.name] = True
        names = self.table.c.keys()
        json_columns = [i for i, c in enumerate(self.table.columns) if isinstance(c.type, sa.JSON)]
        dbapi = conn.connection.driver_connection
        assert dbapi is not None
        columns = ", ".join(preparer.quote(n) for n in names)
        with (
            dbapi.cursor() as cur,
            cur.copy(f"COPY {preparer.quote(self._stage.name)} ({columns}) FROM STDIN") as copy,
        ):
            write = copy.write_row
            if json_columns:
                for row in rows:
                    values = list(row)
                    for i in json_columns:
                        if values[i] is not None:
                            values[i] = Jsonb(values[i])
                    write(values)
            else:
                for row in rows:
                    write(row)
        conn.execute(self._upsert_stmt)

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
                t.metadata.create_all(conn, checkfirst=True)
                write_definition(conn, target, self.schema)
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
            actions = self._sync_indexes(inspector)
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
        t.metadata.create_all(self.engine, checkfirst=True)
        return [f"created shadow table {t.name}"]

    def _sync_indexes(self, inspector: Any) -> list[str]:
        """Create the configured column indexes the table lacks and drop single-column
        indexes of configured columns that are no longer wanted."""
        t = self.table
        present: dict[str, str] = {}
        for found in inspector.get_indexes(t.name, schema=t.schema):
            columns = found.get("column_names") or []
            if len(columns) == 1 and not found.get("unique") and found.get("name"):
                present[str(columns[0])] = str(found["name"])
        wanted = {c.name for c in self.target.columns if c.index}
        actions: list[str] = []
        with self.engine.begin() as conn:
            for index in t.indexes:
                column = next(iter(index.columns)).name
                if column not in present:
                    index.create(conn)
                    actions.append(f"created index {index.name}")
            for column, name in present.items():
                if column in t.c and column not in wanted:
                    sa.Index(name, t.c[column]).drop(conn)
                    actions.append(f"dropped index {name}")
        return actions

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
            exists = sa.inspect(self.engine).has_table(live.name, schema=live.schema)
            dialect = self.engine.dialect
            q = dialect.identifier_preparer

            def ddl(element: Any) -> str:
                return str(element.compile(dialect=dialect))

            with self.engine.connect() as conn:
                if not self._postgres:
                    # pysqlite starts a transaction only before DML: begin one ourselves so
                    # the renames and the drop commit together.
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                try:
                    if exists:
                        conn.exec_driver_sql(
                            f"ALTER TABLE {q.format_table(live)} RENAME TO {q.quote(old.name)}"
                        )
                    conn.exec_driver_sql(
                        f"ALTER TABLE {q.format_table(staged)} RENAME TO {q.quote(live.name)}"
                    )
                    if exists:
                        conn.exec_driver_sql(f"DROP TABLE {q.format_table(old)}")
                    for index in live.indexes:
                        column = next(iter(index.columns)).name
                        shadow_index = next(
                            i for i in staged.indexes if next(iter(i.columns)).name == column
                        )
                        if self._postgres:
                            conn.exec_driver_sql(
                                f"ALTER INDEX {q.format_index(shadow_index)} "
                                f"RENAME TO {q.quote(str(index.name))}"
                            )
                        else:  # SQLite cannot rename an index: build it under its name
                            conn.exec_driver_sql(ddl(sa.schema.DropIndex(shadow_index)))
                            conn.exec_driver_sql(ddl(sa.schema.CreateIndex(index)))
                    if self._postgres:
                        conn.exec_driver_sql(
                            f"ALTER TABLE {q.format_table(live)} RENAME CONSTRAINT "
                            f"{q.quote(pk_name(staged.name))} TO {q.quote(pk_name(live.name))}"
                        )
                    write_definition(conn, target, self.schema)
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()
            self._use(target)
            self.rebuild_needed = None

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
        size = len(ids) or 1 if self._postgres else _CHUNK
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


def _row_num(row: tuple[Any, ...]) -> Any:
    return row[1]
