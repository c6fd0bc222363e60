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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from psycopg.types.json import Jsonb
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateColumn

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


def build_table(config: DataSourceConfig, schema: str | None = None) -> sa.Table:
    """The SQLAlchemy table of a data source: system columns first, then the configured ones."""
    return sa.Table(
        config.table,
        sa.MetaData(schema=sql_identifier(schema, "schema") if schema else None),
        sa.Column(DOC_ID, sa.String(255), primary_key=True),
        sa.Column(ROW_NUM, sa.Integer, primary_key=True, autoincrement=False),
        *(
            sa.Column(c.name, column_type(c.type), nullable=True, index=c.index)
            for c in config.columns
        ),
    )


class ReportTableProcessor(BulkProcessor):
    """A configurable report table (a "data source") fed by a pillow."""

    def __init__(
        self,
        config: DataSourceConfig | Mapping[str, Any] | str | Path,
        engine: sa.Engine | str,
        *,
        schema: str | None = None,
    ) -> None:
        if isinstance(config, DataSourceConfig):
            self.config = config
        elif isinstance(config, Mapping):
            self.config = DataSourceConfig.from_dict(config)
        else:
            self.config = load_data_source(config)
        self.engine = make_engine(engine)
        self.table = build_table(self.config, schema)
        self._postgres = self.engine.dialect.name == "postgresql"
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
        latest: dict[str, Change] = {}
        for change in changes:
            latest[change.id] = change
        config = self.config
        rows: list[Row] = []
        gone: list[str] = []
        by_count: dict[int, list[str]] = {}
        failures: list[ChangeFailure] = []
        for doc_id, change in latest.items():
            document = None if change.deleted else change.document
            if document is None:
                gone.append(doc_id)
                continue
            try:
                doc_rows = config.rows(doc_id, document)
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

    def _upsert(self, conn: sa.Connection, rows: list[Row]) -> None:
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
                    values = [row[n] for n in names]
                    for i in json_columns:
                        if values[i] is not None:
                            values[i] = Jsonb(values[i])
                    write(values)
            else:
                for row in rows:
                    write([row[n] for n in names])
        conn.execute(self._upsert_stmt)

    # -- schema ------------------------------------------------------------------------

    def bootstrap(self) -> None:
        """Create the table, or add the columns the config gained since it was created."""
        for action in self.migrate():
            log.info("report %s: %s", self.config.name, action)

    def migrate(self) -> list[str]:
        """Bring the table in line with the config, additively; returns what was done.

        Added columns are created empty (NULL for existing rows) until a rebuild; columns
        that left the config are kept, never dropped behind the user's back.
        """
        t = self.table
        inspector = sa.inspect(self.engine)
        if not inspector.has_table(t.name, schema=t.schema):
            t.metadata.create_all(self.engine, checkfirst=True)
            return [f"created table {t.name}"]
        reflected = {c["name"]: c["type"] for c in inspector.get_columns(t.name, schema=t.schema)}
        existing = set(reflected)
        lacking = [name for name in SYSTEM_COLUMNS if name not in existing]
        if lacking:
            raise ReportSchemaError(
                f"table {t.name!r} exists but has no {', '.join(lacking)} column: it is not a "
                f"report table of data source {self.config.name!r}; pick another table name"
            )
        self._check_types(reflected)
        actions: list[str] = []
        preparer = self.engine.dialect.identifier_preparer
        with self.engine.begin() as conn:
            for col in t.columns:
                if col.name in existing:
                    continue
                column_ddl = CreateColumn(col).compile(dialect=self.engine.dialect)
                conn.execute(
                    sa.text(f"ALTER TABLE {preparer.format_table(t)} ADD COLUMN {column_ddl}")
                )
                for idx in t.indexes:
                    if col.name in idx.columns:
                        idx.create(conn, checkfirst=True)
                actions.append(
                    f"added column {col.name} (NULL for existing rows until "
                    f"`changefeed reports rebuild {self.config.name}`)"
                )
        for name in sorted(existing - set(t.c.keys())):
            msg = f"column {name} is no longer in the config; kept (a rebuild drops it)"
            log.warning("report %s: %s", self.config.name, msg)
            actions.append(msg)
        return actions

    def _check_types(self, reflected: Mapping[str, Any]) -> None:
        """Refuse a table whose columns have another type than the config says: SQLite would
        store the new values with the old affinity and PostgreSQL refuse every batch, and
        changing a column's type in place could lose data, so a rebuild is the way."""
        for column in self.config.columns:
            if column.name not in reflected:
                continue
            old = reflected_kind(reflected[column.name])
            if old is None or old == column.type:
                continue
            raise ReportSchemaError(
                f"report {self.config.name!r}: column {column.name!r} of table "
                f"{self.table.name!r} is {old} ({reflected[column.name]}) in the database but "
                f"{column.type} in the config; rebuild the table with `changefeed reports "
                f"rebuild {self.config.name}` (or `changefeed reindex PILLOW --reset`)"
            )

    def reset(self) -> None:
        """Drop and recreate the table empty, for a rebuild from the document stores."""
        self.table.drop(self.engine, checkfirst=True)
        self.table.metadata.create_all(self.engine, checkfirst=True)

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
