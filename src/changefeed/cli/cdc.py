"""``changefeed cdc``: PostgreSQL change data capture: manage slots, run the publisher."""

from __future__ import annotations

import json
import time
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from changefeed.cli.common import UserError, cli, get_app, user_errors
from changefeed.cli.output import escape, plural, size
from changefeed.runner import run_runnable
from changefeed.sources.postgres_cdc import (
    CDCError,
    CDCTable,
    PostgresCDC,
    create_slot,
    drop_slot,
    list_slots,
    load_config,
    slot_status,
)

_db_option = click.option(
    "--db",
    "dsn",
    envvar="CHANGEFEED_CDC_DB",
    required=True,
    metavar="URL",
    help="PostgreSQL URL (libpq or SQLAlchemy form; default: $CHANGEFEED_CDC_DB).",
)


@cli.group("cdc")
def cdc_group() -> None:
    """PostgreSQL CDC: stubs for committed row changes, from a logical replication slot."""


@cdc_group.group("slot")
def slot_group() -> None:
    """Create, inspect and drop replication slots (wal2json)."""


@slot_group.command("create")
@click.argument("slot")
@_db_option
def slot_create_cmd(slot: str, dsn: str) -> None:
    """Create SLOT; changes committed from now on are kept until CDC publishes them."""
    with user_errors(CDCError):
        status = create_slot(dsn, slot)
    click.echo(f"slot {slot} created at {status['confirmed_flush_lsn']}")


@slot_group.command("show")
@click.argument("slot", required=False)
@_db_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def slot_show_cmd(slot: str | None, dsn: str, as_json: bool) -> None:
    """Show SLOT (or every slot): plugin, active, confirmed position and lag in bytes."""
    with user_errors(CDCError):
        slots: list[dict[str, Any]] = [slot_status(dsn, slot)] if slot else list_slots(dsn)
    if slot and not slots[0]["exists"]:
        raise UserError(f"replication slot {slot!r} does not exist")
    if as_json:
        click.echo(json.dumps(slots if not slot else slots[0]))
        return
    if not slots:
        click.echo("no replication slots")
        return
    table = Table()
    for column in ("slot", "plugin", "database"):
        # Names are never cut: two slots with one prefix must not both read "changefee…".
        width = max([len(column), *(len(escape(s[column])) for s in slots)])
        table.add_column(column, overflow="fold", min_width=width)
    for column in ("active", "confirmed", "lag", "retained WAL"):
        table.add_column(column)
    for s in slots:
        table.add_row(
            escape(s["slot"]),
            escape(s["plugin"]),
            escape(s["database"]),
            "yes" if s["active"] else "no",
            str(s["confirmed_flush_lsn"]),
            size(s["lag_bytes"]),
            size(s["retained_bytes"]),
        )
    Console().print(table)


@slot_group.command("drop")
@click.argument("slot")
@_db_option
def slot_drop_cmd(slot: str, dsn: str) -> None:
    """Drop SLOT so the server stops keeping WAL for it."""
    with user_errors(CDCError):
        drop_slot(dsn, slot)
    click.echo(f"slot {slot} dropped")


@cdc_group.command("run")
@_db_option
@click.option("--slot", help="Replication slot (or 'slot' in the config file).")
@click.option(
    "--table",
    "table_specs",
    multiple=True,
    metavar="SPEC",
    help="[schema.]table:id_column:doc_type[:domain_column]; repeat for more tables.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="YAML/JSON file: {slot: ..., tables: [{table, id_column, document_type, ...}]}.",
)
@click.option("--topic", help="Publish every stub to this topic (default: route by doc type).")
@click.option(
    "--create-slot", "create_missing", is_flag=True, help="Create the slot if it does not exist."
)
@click.option("--once", is_flag=True, help="Stop when the slot is drained.")
@click.option("--batch-size", type=click.IntRange(min=1), default=5000, show_default=True)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0),
    default=0.05,
    show_default=True,
    help="Seconds to wait after a poll that found the slot drained.",
)
@click.pass_context
def run_cmd(
    ctx: click.Context,
    dsn: str,
    slot: str | None,
    table_specs: tuple[str, ...],
    config_path: str | None,
    topic: str | None,
    create_missing: bool,
    once: bool,
    batch_size: int,
    poll_interval: float,
) -> None:
    """Publish stubs for committed changes of the configured tables.

    The slot advances only after the log acknowledged the stubs, so killing this command at
    any point loses nothing (a batch may be published twice). SIGTERM/SIGINT stop it after
    the batch in hand.
    """
    with user_errors(CDCError):
        tables = [CDCTable.parse(spec) for spec in table_specs]
        if config_path:
            config = load_config(config_path)
            tables.extend(config.tables)
            slot = slot or config.slot
        if not tables:
            raise UserError("no tables: give --table SPEC or --config FILE")
        if not slot:
            raise UserError("no slot: give --slot NAME (or 'slot' in the config file)")
    app = get_app(ctx)
    with user_errors(CDCError):
        cdc = PostgresCDC(
            dsn,
            slot,
            tables,
            app.publisher(),
            router=app.router,
            topic=topic,
            batch_size=batch_size,
            poll_interval=poll_interval,
            create_slot=create_missing,
        )
    started = time.monotonic()
    try:
        with user_errors(CDCError):
            # bootstrap creates a missing slot with --create-slot; signals stop after the batch
            total = run_runnable(cdc, forever=not once)
    finally:
        app.close()
    elapsed = time.monotonic() - started
    click.echo(f"cdc slot {slot}: {plural(total, 'stub')} published in {elapsed:.1f}s", err=True)
