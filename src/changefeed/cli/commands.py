"""Which module defines each command, and its one-line help.

The root group lists the commands (``changefeed --help``) from this table and imports a
command's modules only when that command runs: they load SQLAlchemy, the backends and the
processors, which take most of a second, while ``--help`` takes a tenth of it. A test keeps
the table equal to what the modules define (tests/cli/test_commands.py).
"""

from __future__ import annotations

from typing import NamedTuple


class LazyCommand(NamedTuple):
    """Where a command is defined: the modules under ``changefeed.cli`` that attach it (and
    its subcommands) to the root group, and its help's first sentence."""

    modules: tuple[str, ...]
    help: str


COMMANDS: dict[str, LazyCommand] = {
    "bootstrap": LazyCommand(
        ("reindex",),
        (
            "Run the processors' one-time setup (create indexes and tables) for the given "
            "pillows, or all of them; a report table whose definition changed is rebuilt next to "
            "the live one and swapped in (or refused, with auto_rebuild: false)."
        ),
    ),
    "cdc": LazyCommand(
        ("cdc",),
        "PostgreSQL CDC: stubs for committed row changes, from a logical replication slot.",
    ),
    "changes": LazyCommand(
        ("changes",), "Find changes in TOPIC, with partition, offset and publish time."
    ),
    "checkpoint": LazyCommand(
        ("checkpoint", "surgery"),
        "Inspect and move a pillow's checkpoints (every move is kept in a history).",
    ),
    "dashboard": LazyCommand(
        ("dashboard",),
        (
            "Serve the dashboard: lag, throughput, error queue (with retry), checkpoint history "
            "and a live stream of changes."
        ),
    ),
    "demo": LazyCommand(
        ("demo",),
        (
            "Create sample cases and forms, publish their changes, keep two report tables in sync"
            " while documents keep changing, and prove the tables match the source."
        ),
    ),
    "errors": LazyCommand(("errors",), "The error queue: changes whose processing failed."),
    "outbox": LazyCommand(
        ("outbox",), "Transactional outbox: stubs written with your data, relayed to the log."
    ),
    "pillows": LazyCommand(
        ("pillows",),
        (
            "List the pillows the app defines, with their topics, and its other runnables (Couch "
            "bridges, relays) with their kind."
        ),
    ),
    "reindex": LazyCommand(
        ("reindex",),
        (
            "Rebuild a pillow's output from its document stores (resumable; the live pillow may "
            "keep running)."
        ),
    ),
    "reports": LazyCommand(
        ("reports",), "Configurable report tables (data sources defined in JSON or YAML)."
    ),
    "republish": LazyCommand(
        ("republish",),
        (
            "Publish fresh change stubs for documents from their store; every pillow reading the "
            "topic processes them again."
        ),
    ),
    "retry-runner": LazyCommand(
        ("supervise",),
        "Retry due error-queue entries of pillows (all by default) every INTERVAL seconds.",
    ),
    "run": LazyCommand(
        ("pillows",),
        (
            "Run one pillow, Couch bridge or relay in this process (SIGTERM/SIGINT stop it after "
            "the current batch)."
        ),
    ),
    "status": LazyCommand(
        ("pillows",),
        (
            "Per partition: checkpoint, head, lag and checkpoint age; error counts; the data "
            "sources of report pillows (ReportTablesProcessor: counts per state, the ones not "
            "live, the slowest data sources and domains; with --json every data source, under "
            '"reports"); the state of the other runnables (Couch bridges, relays); the lag of '
            "the app's watched CDC replication slots; error-queue entries of pillows no longer "
            "in the app (orphaned)."
        ),
    ),
    "supervise": LazyCommand(
        ("supervise",),
        (
            "Run pillows, other runnables and the error retry runner as child processes, "
            "restarting crashed ones."
        ),
    ),
    "tail": LazyCommand(
        ("tail",), "Print a topic's changes as JSON lines: position, publish time, then the stub."
    ),
    "topics": LazyCommand(("topics",), "Create, list, describe and grow the log's topics."),
    "verify": LazyCommand(
        ("verify",),
        (
            "Compare each processor's output with what the document stores say it should be: "
            "checked, missing, extra, stale, different."
        ),
    ),
}
