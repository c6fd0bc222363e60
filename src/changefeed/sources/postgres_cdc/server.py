"""Talking to the server: connecting, checking that CDC can work, and classifying errors.

Whether a failure is worth retrying is decided by its SQLSTATE (the code PostgreSQL attaches
to every error), never by its message, which changes with the server's version and locale.
"""

from __future__ import annotations

from typing import Any

import psycopg

from changefeed.sources.postgres_cdc.config import PLUGIN, CDCError, CDCTable, libpq_dsn

UNDEFINED_OBJECT = "42704"
"""undefined_object: no such replication slot."""
UNDEFINED_TABLE = "42P01"
INVALID_CATALOG_NAME = "3D000"
"""The database does not exist."""
OBJECT_IN_USE = "55006"
"""The replication slot is held by another consumer."""
UNDEFINED_FILE = "58P01"
"""The output plugin's library is not installed."""

MISSING = frozenset({UNDEFINED_OBJECT, UNDEFINED_TABLE, INVALID_CATALOG_NAME, UNDEFINED_FILE})
"""Something that does not exist: waiting will not create it, so a relay stops."""


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE behind an error: ours (`CDCError`), psycopg 3's, or psycopg2's
    (``pgcode``, for the optional streaming reader); None when the server gave none."""
    if isinstance(exc, CDCError):
        return exc.sqlstate
    if isinstance(exc, psycopg.Error):
        return exc.sqlstate
    code = getattr(exc, "pgcode", None)  # psycopg2 is optional: not imported to check
    return code if isinstance(code, str) else None


def retryable(exc: BaseException) -> bool:
    """Whether a failed read or publish may succeed later (server restarting, slot briefly
    in use, log down) rather than needing an operator (slot, table or plugin missing)."""
    return sqlstate(exc) not in MISSING


def slot_error(
    exc: BaseException, slot: str, in_use: str = "is in use by another consumer"
) -> CDCError | None:
    """The one-line error for a slot that does not exist or that another consumer holds
    (by SQLSTATE, from psycopg 3 or psycopg2), or None for any other error."""
    code = sqlstate(exc)
    if code == UNDEFINED_OBJECT:
        return CDCError(f"replication slot {slot!r} does not exist", sqlstate=code)
    if code == OBJECT_IN_USE:
        return CDCError(f"replication slot {slot!r} {in_use}", sqlstate=code)
    return None


def connect(dsn: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(libpq_dsn(dsn), autocommit=True)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CDCError(f"cannot connect to PostgreSQL: {first}") from None


def check_server(conn: psycopg.Connection[Any]) -> None:
    """Logical decoding needs ``wal_level=logical``; say so instead of a cryptic failure."""
    row = conn.execute("SHOW wal_level").fetchone()
    level = row[0] if row else "unknown"
    if level != "logical":
        raise CDCError(
            f"PostgreSQL runs with wal_level={level}; CDC needs wal_level=logical "
            "(set it in postgresql.conf and restart the server)"
        )


_TABLE_INFO = """
SELECT c.oid, c.relreplident, c.relkind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""
_COLUMNS = (
    "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped"
)
_IDENTITY_INDEX = """
SELECT a.attname FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
WHERE i.indrelid = %s AND (CASE WHEN %s THEN i.indisprimary ELSE i.indisreplident END)
"""


def check_table(conn: psycopg.Connection[Any], table: CDCTable) -> None:
    """The table exists, has the configured columns, and its deletes will carry the id."""
    info = conn.execute(_TABLE_INFO, (table.schema, table.table)).fetchone()
    if info is None or info[2] not in ("r", "p"):
        raise CDCError(f"table {table.qualified} does not exist")
    oid, identity = info[0], info[1]
    columns = {r[0] for r in conn.execute(_COLUMNS, (oid,))}
    for col in (table.id_column, table.domain_column, table.version_column):
        if col is not None and col not in columns:
            raise CDCError(f"table {table.qualified} has no column {col!r}")
    if identity == "f":
        return
    if identity == "n":
        raise CDCError(
            f"table {table.qualified} has REPLICA IDENTITY NOTHING: its updates and deletes "
            "cannot be identified; use the default (primary key) or REPLICA IDENTITY FULL"
        )
    key = {r[0] for r in conn.execute(_IDENTITY_INDEX, (oid, identity == "d"))}
    if not key:
        raise CDCError(
            f"table {table.qualified} has no primary key: CDC cannot tell which row an update "
            "or delete changed; add a primary key or set REPLICA IDENTITY FULL"
        )
    if table.id_column not in key:
        raise CDCError(
            f"id column {table.id_column!r} of {table.qualified} is not in its primary key "
            f"(or replica identity: {', '.join(sorted(key))}), so deletes would not carry it"
        )


def plugin_error(exc: psycopg.Error) -> CDCError | None:
    """What to do when the server cannot load the output plugin (its messages, reworded)."""
    text = str(exc)
    if "output_plugin_libraries" in text or "may not be used as an output plugin" in text:
        return CDCError(
            f"the server does not allow the {PLUGIN} output plugin: add it to "
            "output_plugin_libraries and reload the configuration",
            sqlstate=exc.sqlstate,
        )
    if "could not access file" in text and PLUGIN in text:
        return CDCError(
            f"the {PLUGIN} output plugin is not installed on the server "
            "(Debian: apt-get install postgresql-<version>-wal2json)",
            sqlstate=exc.sqlstate,
        )
    return None
