"""Replication slots: create, drop, list, and how far behind one is.

A slot keeps WAL on the server until its consumer confirms it, so a slot nobody reads fills
the disk: `slot_status` (lag in bytes) is what ``changefeed status`` and dashboards watch.
"""

from __future__ import annotations

from typing import Any

import psycopg

from changefeed.sources.postgres_cdc.config import PLUGIN, CDCError, slot_name
from changefeed.sources.postgres_cdc.server import check_server, connect, plugin_error, slot_error


def create_slot(dsn: str, slot: str) -> dict[str, Any]:
    """Create a logical replication slot for wal2json; returns its `slot_status`.

    Changes committed after this point are kept for the slot until it is advanced.
    """
    slot_name(slot)
    with connect(dsn) as conn:
        check_server(conn)
        try:
            conn.execute("SELECT pg_create_logical_replication_slot(%s, %s)", (slot, PLUGIN))
        except psycopg.errors.DuplicateObject as exc:
            raise CDCError(
                f"replication slot {slot!r} already exists", sqlstate=exc.sqlstate
            ) from None
        except psycopg.Error as exc:
            err = plugin_error(exc)
            if err is not None:
                raise err from None
            raise
    return slot_status(dsn, slot)


def drop_slot(dsn: str, slot: str) -> None:
    """Drop a slot so the server stops keeping WAL for it."""
    slot_name(slot)
    with connect(dsn) as conn:
        try:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        except psycopg.Error as exc:
            error = slot_error(exc, slot, "is in use; stop its consumer first")
            if error is None:
                raise
            raise error from None


_SLOTS = """
SELECT slot_name, plugin, slot_type, database, active, active_pid,
       restart_lsn::text, confirmed_flush_lsn::text,
       pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,
       wal_status
FROM pg_replication_slots
"""
_SLOT_FIELDS = (
    "slot",
    "plugin",
    "slot_type",
    "database",
    "active",
    "active_pid",
    "restart_lsn",
    "confirmed_flush_lsn",
    "lag_bytes",
    "retained_bytes",
    "wal_status",
)


def list_slots(dsn: str) -> list[dict[str, Any]]:
    """Every replication slot of the server, with `slot_status`'s fields."""
    with connect(dsn) as conn:
        rows = conn.execute(_SLOTS + " ORDER BY slot_name").fetchall()
    return [{"exists": True, **dict(zip(_SLOT_FIELDS, r, strict=True))} for r in rows]


def slot_status(dsn: str, slot: str) -> dict[str, Any]:
    """Where a slot stands, for ``changefeed status``, metrics and dashboards.

    ``lag_bytes`` is how much WAL was written since the slot's consumer last confirmed
    (``pg_current_wal_lsn() - confirmed_flush_lsn``): near 0 for a consumer that keeps up.
    ``retained_bytes`` is the WAL the server keeps for the slot. ``exists`` is False (and
    nothing else is set) when there is no such slot.
    """
    slot_name(slot)
    with connect(dsn) as conn:
        row = conn.execute(_SLOTS + " WHERE slot_name = %s", (slot,)).fetchone()
    if row is None:
        return {"slot": slot, "exists": False}
    return {"exists": True, **dict(zip(_SLOT_FIELDS, row, strict=True))}
