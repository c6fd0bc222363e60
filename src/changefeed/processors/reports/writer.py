"""The write path of a report table: one transaction of multi-row writes per batch.

In one transaction the rows of documents that were deleted or stopped matching are deleted,
the new rows upserted by (doc_id, row_num), and, for data sources that emit several rows per
document, the rows beyond each document's new row count deleted. Replaying a batch writes the
same rows again, so the write is idempotent as the pillow contract requires.

On PostgreSQL (psycopg 3) the batch is COPYed into a temporary table and upserted with one
``INSERT .. SELECT .. ON CONFLICT``: a fixed statement (compiled once, whatever the batch
size) after the fastest bulk load the server has. SQLite gets an ``executemany`` upsert.

`write_tables` writes several tables of one database in one transaction (a batch of
`ReportTablesProcessor`), finding a table that fails with a savepoint per table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from changefeed.db import upsert
from changefeed.failures import is_dependency_failure
from changefeed.processors.reports.config import SYSTEM_COLUMNS

IDS_PER_STATEMENT = 500
"""Ids per statement on dialects that expand IN lists into parameters (SQLite's limit)."""


class TableWriter:
    """Writes batches of rows into one table of one shape (a new writer when it changes)."""

    def __init__(self, engine: sa.Engine, table: sa.Table) -> None:
        self.engine = engine
        self.table = table
        self.postgres = engine.dialect.name == "postgresql"
        # The staging table of this exact schema: a new name whenever the columns change.
        signature = repr([(c.name, str(c.type)) for c in table.columns]) + table.name
        self._stage = sa.Table(
            f"cf_stage_{hashlib.sha1(signature.encode()).hexdigest()[:16]}",
            sa.MetaData(),
            *(sa.Column(c.name, c.type) for c in table.columns),
        )
        self._upsert_stmt = self._pg_upsert() if self.postgres else None
        self._sql: tuple[tuple[str, str], tuple[str, str]] | None = None
        # Plain str: orjson takes no str subclass (SQLAlchemy's quoted_name) as a key.
        self._names = [str(c.name) for c in table.columns]

    @property
    def copies(self) -> bool:
        """True when rows are COPYed: they are to be tuples in column order
        (`DataSourceConfig.row_tuples`), else dicts (`DataSourceConfig.rows`)."""
        return self._upsert_stmt is not None

    def write(self, gone: list[str], rows: list[Any], by_count: Mapping[int, list[str]]) -> None:
        """In one transaction: delete the rows of ``gone``, upsert ``rows``, and for each
        row count in ``by_count`` delete its documents' rows numbered that count and up."""
        with self.engine.begin() as conn:
            self.write_on(conn, gone, rows, by_count)

    def write_on(
        self,
        conn: sa.Connection,
        gone: list[str],
        rows: list[Any],
        by_count: Mapping[int, list[str]],
    ) -> None:
        """`write` inside the caller's transaction (several tables in one, `write_tables`)."""
        try:
            self.delete(conn, gone)
            self.upsert(conn, rows)
            for count, ids in by_count.items():
                self.delete(conn, ids, from_row=count)
        except BaseException:
            self.forget_stage(conn)
            raise

    def forget_stage(self, conn: sa.Connection) -> None:
        """After a rollback: the staging table may have been created in what was undone."""
        conn.connection.info.pop(self._stage.name, None)

    def statements(
        self,
        literal: Callable[[str], str],
        gone: list[str],
        rows: list[Any],
        by_count: Mapping[int, list[str]],
    ) -> list[str]:
        """`write_on` as parameterless statements (PostgreSQL), so that those of every
        table of a batch go to the server as one query: one round trip for a batch that
        touches many tables with a few rows each, instead of a few per table. The rows
        travel as one JSON literal per table (quoted by ``literal``, the driver's own
        escaping), read back into the table's row type by ``jsonb_populate_recordset``."""
        if self._sql is None:
            self._sql = self._pg_statements()
        (upsert_head, upsert_tail), (delete_head, delete_tail) = self._sql
        out = []
        if gone:
            out.append(f"{delete_head}{literal(_dumps(gone))}{delete_tail}")
        if rows:
            names = self._names
            data = literal(_dumps([dict(zip(names, row, strict=True)) for row in rows]))
            out.append(f"{upsert_head}{data}{upsert_tail}")
        for count, ids in by_count.items():
            out.append(f"{delete_head}{literal(_dumps(ids))}{delete_tail} AND row_num >= {count:d}")
        return out

    def _pg_statements(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """The upsert and the delete, each split where its JSON literal goes."""
        q = self.engine.dialect.identifier_preparer
        t = q.format_table(self.table)
        names = [q.quote(c.name) for c in self.table.columns]
        updates = [f"{n} = EXCLUDED.{n}" for n in names[len(SYSTEM_COLUMNS) :]]
        keys = ", ".join(names[: len(SYSTEM_COLUMNS)])
        conflict = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
        columns = ", ".join(names)
        upsert = (
            f"INSERT INTO {t} ({columns}) SELECT {columns} FROM jsonb_populate_recordset(NULL::{t}, ",
            f") ON CONFLICT ({keys}) {conflict}",
        )
        delete = (f"DELETE FROM {t} WHERE {names[0]} IN (SELECT jsonb_array_elements_text(", "))")
        return upsert, delete

    def _adapted(self, rows: list[Any]) -> list[Any]:
        """Rows with JSON values wrapped for psycopg (it would send a dict as an object)."""
        json_columns = [i for i, c in enumerate(self.table.columns) if isinstance(c.type, sa.JSON)]
        if not json_columns:
            return rows
        from psycopg.types.json import Jsonb  # the driver of this connection: installed

        out = []
        for row in rows:
            values = list(row)
            for i in json_columns:
                if values[i] is not None:
                    values[i] = Jsonb(values[i])
            out.append(values)
        return out

    def delete(self, conn: sa.Connection, ids: list[str], from_row: int = 0) -> None:
        """Delete the rows of ``ids`` (only those numbered ``from_row`` and up)."""
        if not ids:
            return
        t = self.table
        if self.postgres:
            where = t.c.doc_id == sa.any_(sa.bindparam("ids", type_=postgresql.ARRAY(sa.String)))
            stmt = t.delete().where(where)
            if from_row:
                stmt = stmt.where(t.c.row_num >= from_row)
            conn.execute(stmt, {"ids": ids})
            return
        for start in range(0, len(ids), IDS_PER_STATEMENT):
            stmt = t.delete().where(t.c.doc_id.in_(ids[start : start + IDS_PER_STATEMENT]))
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

    def upsert(self, conn: sa.Connection, rows: list[Any]) -> None:
        """Upsert the rows: dicts on SQLite, tuples in column order on PostgreSQL
        (see `copies`)."""
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
        dbapi = conn.connection.driver_connection
        assert dbapi is not None
        columns = ", ".join(preparer.quote(n) for n in names)
        with (
            dbapi.cursor() as cur,
            cur.copy(f"COPY {preparer.quote(self._stage.name)} ({columns}) FROM STDIN") as copy,
        ):
            write = copy.write_row
            for row in self._adapted(rows):
                write(row)
        conn.execute(self._upsert_stmt)


COPY_ROWS = 500
"""Rows of one table in a batch from which `write_tables` COPYs them (PostgreSQL) instead of
sending them with the other tables' statements: COPY wins on many rows, one shared query
on a few per table."""


@dataclass(slots=True)
class TableWrite:
    """One table's part of a batch, for `write_tables`; ``key`` names it in the result."""

    key: str
    writer: TableWriter
    gone: list[str] = field(default_factory=list)
    rows: list[Any] = field(default_factory=list)
    by_count: dict[int, list[str]] = field(default_factory=dict)


def write_tables(engine: sa.Engine, writes: list[TableWrite]) -> dict[str, BaseException]:
    """Write several tables of one database in one transaction; returns the tables that
    failed (by key) with their error, the others' writes committed.

    The batch is tried whole first. When that fails, it is redone table by table, each in a
    SAVEPOINT of one transaction, so a table whose rows cannot be written (a value its
    column cannot hold, the table dropped) fails alone. A dependency's failure (the server
    down) raises: when the database cannot be reached, or every table failed so (one table
    alone: when the database no longer answers either)."""
    if not writes:
        return {}
    try:
        with engine.begin() as conn:
            try:
                _write_all(conn, writes)
            except BaseException:
                for w in writes:
                    w.writer.forget_stage(conn)
                raise
    except Exception:  # noqa: BLE001 - found out table by table below
        return _isolated(engine, writes)
    return {}


def _write_all(conn: sa.Connection, writes: list[TableWrite]) -> None:
    if conn.dialect.name != "postgresql":
        for w in writes:
            w.writer.write_on(conn, w.gone, w.rows, w.by_count)
        return
    from psycopg.adapt import Transformer  # the driver of this connection: installed

    dbapi: Any = conn.connection.driver_connection
    # The driver's quoting of a string literal (one adapter context for the whole batch).
    as_literal = Transformer.from_context(dbapi).as_literal
    encoding = dbapi.info.encoding

    def literal(text: str) -> str:
        return str(as_literal(text).decode(encoding))

    statements: list[str] = []
    for w in writes:
        if len(w.rows) >= COPY_ROWS:
            w.writer.write_on(conn, w.gone, w.rows, w.by_count)
        else:
            statements += w.writer.statements(literal, w.gone, w.rows, w.by_count)
    if statements:
        with dbapi.cursor() as cur:
            cur.execute(";\n".join(statements))


def _dumps(value: Any) -> str:
    """JSON for `jsonb_populate_recordset`: dates and datetimes in ISO form, decimals as
    their text (which the column types read back). orjson, since this runs for every table
    a batch touches, on the thread that holds up the pillow; it writes NaN and the
    infinities as null (JSON has no such numbers)."""
    return orjson.dumps(value, default=str).decode()


def _isolated(engine: sa.Engine, writes: list[TableWrite]) -> dict[str, BaseException]:
    failed: dict[str, BaseException] = {}
    down: list[BaseException] = []
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            # pysqlite begins a transaction only before DML; the savepoints need one around.
            conn.exec_driver_sql("BEGIN")
        for w in writes:
            try:
                with conn.begin_nested():
                    w.writer.write_on(conn, w.gone, w.rows, w.by_count)
            except Exception as exc:  # noqa: BLE001 - this table's failure, or the server's
                failed[w.key] = exc
                if is_dependency_failure(exc):
                    down.append(exc)
        # SQLite calls a missing table or a wrong schema an OperationalError, like a server
        # that is down: one table failing so while the database still answers is at fault;
        # several tables all failing so is the database's trouble (a full disk, say).
        if down and len(down) == len(writes) and (len(down) > 1 or not _answers(conn)):
            raise down[0]
        conn.commit()
    return failed


def _answers(conn: sa.Connection) -> bool:
    try:
        conn.exec_driver_sql("SELECT 1")
    except Exception:  # noqa: BLE001 - any failure: the database is not there
        return False
    return True
