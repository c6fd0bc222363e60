"""``changefeed outbox``: create the outbox table, run the relay, see what is pending."""

from __future__ import annotations

import json
import time

import click
import sqlalchemy as sa

from changefeed.cli.common import UserError, cli, get_app, user_errors
from changefeed.cli.output import plural
from changefeed.db import make_engine
from changefeed.runner import run_runnable
from changefeed.sources.outbox import (
    DEFAULT_TABLE,
    Outbox,
    OutboxRelay,
    outbox_status,
    purge_published,
)

_db_option = click.option(
    "--db",
    "db_url",
    envvar="CHANGEFEED_OUTBOX_DB",
    required=True,
    metavar="URL",
    help="SQLAlchemy URL of the application database (default: $CHANGEFEED_OUTBOX_DB).",
)
_table_option = click.option(
    "--table", default=DEFAULT_TABLE, show_default=True, help="Outbox table name."
)
_schema_option = click.option("--schema", default=None, help="Schema of the outbox table.")


def _open(db_url: str, table: str, schema: str | None) -> tuple[sa.Engine, Outbox]:
    with user_errors(sa.exc.ArgumentError, ImportError):
        outbox = Outbox(table, schema=schema)
        engine = make_engine(db_url)
    return engine, outbox


def _require_table(engine: sa.Engine, outbox: Outbox) -> None:
    t = outbox.table
    with user_errors(sa.exc.OperationalError):
        exists = sa.inspect(engine).has_table(t.name, schema=t.schema)
    if not exists:
        raise UserError(
            f"outbox table {t.fullname} does not exist (create it: changefeed outbox create)"
        )


@cli.group("outbox")
def outbox_group() -> None:
    """Transactional outbox: stubs written with your data, relayed to the log."""


@outbox_group.command("create")
@_db_option
@_table_option
@_schema_option
def create_cmd(db_url: str, table: str, schema: str | None) -> None:
    """Create the outbox table (and its index) if it does not exist."""
    engine, outbox = _open(db_url, table, schema)
    with user_errors(sa.exc.OperationalError):
        outbox.create(engine)
    click.echo(f"outbox table {outbox.name} ready")


@outbox_group.command("relay")
@_db_option
@_table_option
@_schema_option
@click.option("--once", is_flag=True, help="Stop when the outbox is empty.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0),
    default=0.05,
    show_default=True,
    help="Seconds to wait after an empty poll.",
)
@click.option(
    "--mark",
    is_flag=True,
    help="Keep published rows (set published_at) instead of deleting them.",
)
@click.pass_context
def relay_cmd(
    ctx: click.Context,
    db_url: str,
    table: str,
    schema: str | None,
    once: bool,
    batch_size: int,
    poll_interval: float,
    mark: bool,
) -> None:
    """Move committed outbox rows to the log, in commit order, at least once.

    SIGTERM/SIGINT stop it after the batch in hand; a second relay on the same outbox
    stands by until the first one goes away.
    """
    engine, outbox = _open(db_url, table, schema)
    _require_table(engine, outbox)
    app = get_app(ctx)
    relay = OutboxRelay(
        engine,
        app.publisher(),
        outbox=outbox,
        router=app.router,
        batch_size=batch_size,
        poll_interval=poll_interval,
        delete=not mark,
    )
    started = time.monotonic()
    try:
        total = run_runnable(relay, forever=not once)  # signals stop it after the batch
    finally:
        app.close()
    elapsed = time.monotonic() - started
    click.echo(f"outbox {outbox.name}: {plural(total, 'stub')} relayed in {elapsed:.1f}s", err=True)


@outbox_group.command("status")
@_db_option
@_table_option
@_schema_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(db_url: str, table: str, schema: str | None, as_json: bool) -> None:
    """Pending rows, age of the oldest one, rows that could not be published."""
    engine, outbox = _open(db_url, table, schema)
    _require_table(engine, outbox)
    st = outbox_status(engine, outbox)
    if as_json:
        click.echo(json.dumps(st.to_dict()))
        return
    age = "-" if st.oldest_age is None else f"{st.oldest_age:.1f}s"
    click.echo(
        f"{st.table}: pending {st.pending}, oldest {age}, failed {st.failed}, "
        f"kept after publishing {st.published_kept}"
    )


@outbox_group.command("purge")
@_db_option
@_table_option
@_schema_option
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    required=True,
    metavar="SECONDS",
    help="Delete rows published (with --mark) more than this long ago.",
)
def purge_cmd(db_url: str, table: str, schema: str | None, older_than: float) -> None:
    """Delete rows a '--mark' relay kept after publishing."""
    engine, outbox = _open(db_url, table, schema)
    _require_table(engine, outbox)
    removed = purge_published(engine, older_than, outbox)
    click.echo(f"{removed} published rows removed from {outbox.name}")
