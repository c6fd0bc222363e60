"""A report table's shape in the database: column types, generated names, the table itself,
its indexes and the swap of a rebuilt shadow table into its place.

Kept apart from `processor` so that what a table *is* (and how DDL changes it) can be read
and reasoned about without the write path; `definition` says what it was built *from*.
"""

from __future__ import annotations

import hashlib
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from changefeed.identifiers import sql_identifier
from changefeed.processors.reports.config import DOC_ID, ROW_NUM, DataSourceConfig
from changefeed.processors.reports.definition import write_definition


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


def sync_indexes(engine: sa.Engine, table: sa.Table, inspector: Any, wanted: set[str]) -> list[str]:
    """Create the indexes of ``table`` the database lacks and drop single-column indexes of
    its columns not in ``wanted``; returns what was done. Indexes change no row, so this is
    done in place instead of by a rebuild."""
    present: dict[str, str] = {}
    for found in inspector.get_indexes(table.name, schema=table.schema):
        columns = found.get("column_names") or []
        if len(columns) == 1 and not found.get("unique") and found.get("name"):
            present[str(columns[0])] = str(found["name"])
    actions: list[str] = []
    with engine.begin() as conn:
        for index in table.indexes:
            column = next(iter(index.columns)).name
            if column not in present:
                index.create(conn)
                actions.append(f"created index {index.name}")
        for column, name in present.items():
            if column in table.c and column not in wanted:
                sa.Index(name, table.c[column]).drop(conn)
                actions.append(f"dropped index {name}")
    return actions


def swap_tables(
    engine: sa.Engine,
    live: sa.Table,
    staged: sa.Table,
    old: sa.Table,
    target: DataSourceConfig,
    schema: str | None,
) -> None:
    """In one transaction: rename ``live`` (when it exists) to ``old``, ``staged`` to
    ``live``, drop ``old``, give the indexes and primary key their live names and record
    ``target`` as the table's definition. Readers see the old table or the new one, never
    none. The definitions table must exist (DDL inside the swap would commit on SQLite)."""
    exists = sa.inspect(engine).has_table(live.name, schema=live.schema)
    dialect = engine.dialect
    postgres = dialect.name == "postgresql"
    q = dialect.identifier_preparer

    def ddl(element: Any) -> str:
        return str(element.compile(dialect=dialect))

    with engine.connect() as conn:
        if not postgres:
            # pysqlite starts a transaction only before DML: begin one ourselves so the
            # renames and the drop commit together.
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
                if postgres:
                    conn.exec_driver_sql(
                        f"ALTER INDEX {q.format_index(shadow_index)} "
                        f"RENAME TO {q.quote(str(index.name))}"
                    )
                else:  # SQLite cannot rename an index: build it under its name
                    conn.exec_driver_sql(ddl(sa.schema.DropIndex(shadow_index)))
                    conn.exec_driver_sql(ddl(sa.schema.CreateIndex(index)))
            if postgres:
                conn.exec_driver_sql(
                    f"ALTER TABLE {q.format_table(live)} RENAME CONSTRAINT "
                    f"{q.quote(pk_name(staged.name))} TO {q.quote(pk_name(live.name))}"
                )
            write_definition(conn, target, schema)
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
