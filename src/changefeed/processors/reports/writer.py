"""The write path of a report table: one transaction of multi-row writes per batch.

In one transaction the rows of documents that were deleted or stopped matching are deleted,
the new rows upserted by (doc_id, row_num), and, for data sources that emit several rows per
document, the rows beyond each document's new row count deleted. Replaying a batch writes the
same rows again, so the write is idempotent as the pillow contract requires.

On PostgreSQL (psycopg 3) the batch is COPYed into a temporary table and upserted with one
``INSERT .. SELECT .. ON CONFLICT``: a fixed statement (compiled once, whatever the batch
size) after the fastest bulk load the server has. SQLite gets an ``executemany`` upsert.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from changefeed.db import upsert
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

    @property
    def copies(self) -> bool:
        """True when rows are COPYed: they are to be tuples in column order
        (`DataSourceConfig.row_tuples`), else dicts (`DataSourceConfig.rows`)."""
        return self._upsert_stmt is not None

    def write(self, gone: list[str], rows: list[Any], by_count: Mapping[int, list[str]]) -> None:
        """In one transaction: delete the rows of ``gone``, upsert ``rows``, and for each
        row count in ``by_count`` delete its documents' rows numbered that count and up."""
        with self.engine.begin() as conn:
            try:
                self.delete(conn, gone)
                self.upsert(conn, rows)
                for count, ids in by_count.items():
                    self.delete(conn, ids, from_row=count)
            except BaseException:
                # the rollback also undoes a staging table created in this transaction
                conn.connection.info.pop(self._stage.name, None)
                raise

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
        json_columns = [i for i, c in enumerate(self.table.columns) if isinstance(c.type, sa.JSON)]
        from psycopg.types.json import Jsonb  # the driver of this connection: installed

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
