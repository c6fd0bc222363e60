"""PostgreSQL CDC: stubs for committed row changes, read from a logical replication slot.

The database itself records every committed change in its write-ahead log, so nothing in the
application has to remember to publish, and a crash anywhere loses nothing: a replication slot
keeps the WAL until its consumer confirms it. `PostgresCDC` reads the slot (wal2json,
format-version 2), turns changes of the configured tables into stubs (`CDCTable`: id column,
doc type, optional domain and version columns; deletes become deletions), publishes them,
waits until the log acknowledged them (``flush``), and only then moves the slot forward. A
crash before that re-delivers the batch: at least once, in commit order (logical decoding
emits whole transactions in the order they committed).

Reads return whole transactions, so the slot always advances to the end of a commit. The
begin/commit records of transactions on other tables come along too: they let the slot advance
past unrelated work, which otherwise would pin WAL on the server.

Only one consumer may use a slot at a time; the server refuses a second one while a call of
the first is running. A slot that nobody reads holds WAL forever: watch `slot_status` (lag in
bytes) and drop slots you no longer use.

Modules: `config` (tables, slot names, config files), `server` (connecting, checks, which
errors are worth retrying), `slots` (slot admin and lag), `readers` (polling and streaming),
`relay` (`PostgresCDC` and `add_cdc_relay`).
"""

from changefeed.extras import MissingExtraError

try:  # one check for every module of this package
    import psycopg  # noqa: F401
except ImportError as exc:
    raise MissingExtraError("postgres", exc) from exc

from changefeed.sources.postgres_cdc.config import (
    PLUGIN,
    CDCConfig,
    CDCError,
    CDCTable,
    libpq_dsn,
    load_config,
    slot_name,
)
from changefeed.sources.postgres_cdc.readers import streaming_available
from changefeed.sources.postgres_cdc.relay import CDCStats, PostgresCDC, add_cdc_relay
from changefeed.sources.postgres_cdc.server import (
    check_server,
    check_table,
    retryable,
    sqlstate,
)
from changefeed.sources.postgres_cdc.slots import create_slot, drop_slot, list_slots, slot_status

__all__ = [
    "PLUGIN",
    "CDCConfig",
    "CDCError",
    "CDCStats",
    "CDCTable",
    "PostgresCDC",
    "add_cdc_relay",
    "check_server",
    "check_table",
    "create_slot",
    "drop_slot",
    "libpq_dsn",
    "list_slots",
    "load_config",
    "retryable",
    "slot_name",
    "slot_status",
    "sqlstate",
    "streaming_available",
]
