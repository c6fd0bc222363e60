"""``changefeed run``, ``pillows`` and ``status``."""

from __future__ import annotations

import json
import time

import click
from rich.console import Console
from rich.table import Table

from changefeed.cli.common import UserError, cli, get_app, user_errors
from changefeed.status import PillowStatus, pillow_status


@cli.command("pillows")
@click.pass_context
def pillows_cmd(ctx: click.Context) -> None:
    """List the pillows the app defines, with their topics."""
    app = get_app(ctx)
    if not app.pillow_names:
        click.echo("no pillows defined (point --app or CHANGEFEED_APP at your changefeed.App)")
        return
    for name in app.pillow_names:
        with user_errors():
            pillow = app.get_pillow(name)
        procs = ", ".join(p.name for p in pillow.processors)
        click.echo(f"{name}\ttopics={','.join(pillow.change_feed.topics)}\tprocessors={procs}")


@cli.command("run")
@click.argument("pillow_names", nargs=-1, metavar="PILLOW...")
@click.option("--num-processes", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--process-number", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--once", is_flag=True, help="Stop when caught up instead of running forever.")
@click.option("--no-bootstrap", is_flag=True, help="Skip the processors' bootstrap.")
@click.pass_context
def run_cmd(
    ctx: click.Context,
    pillow_names: tuple[str, ...],
    num_processes: int,
    process_number: int,
    once: bool,
    no_bootstrap: bool,
) -> None:
    """Run one pillow in this process (SIGTERM/SIGINT stop it after the current batch)."""
    if process_number >= num_processes:
        raise UserError(f"--process-number must be below --num-processes ({num_processes})")
    if len(pillow_names) != 1:
        raise UserError("run takes exactly one pillow name (use --all with the supervisor)")
    app = get_app(ctx)
    with user_errors():
        pillow = app.get_pillow(pillow_names[0])
    if not no_bootstrap:
        pillow.bootstrap()
    pillow.install_signal_handlers()
    started = time.monotonic()
    total = pillow.run(forever=not once, num_processes=num_processes, process_number=process_number)
    elapsed = time.monotonic() - started
    click.echo(f"{pillow.name}: {total} changes read in {elapsed:.1f}s", err=True)


def _render(statuses: list[PillowStatus]) -> None:
    console = Console()
    table = Table("pillow", "topic", "partition", "checkpoint", "head", "lag", "checkpoint age")
    for st in statuses:
        for p in st.partitions:
            age = "never" if p.checkpoint_age is None else f"{p.checkpoint_age:.0f}s"
            table.add_row(
                st.pillow, p.topic, str(p.partition),
                "-" if p.checkpoint is None else str(p.checkpoint), str(p.head), str(p.lag), age,
            )
    console.print(table)
    for st in statuses:
        console.print(
            f"{st.pillow}: lag {st.lag}, errors pending {st.errors_pending}, parked {st.errors_parked}"
        )
        for note in st.notes:
            console.print(f"  note: {note}")


@cli.command("status")
@click.argument("pillow_names", nargs=-1, metavar="[PILLOW]...")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status_cmd(ctx: click.Context, pillow_names: tuple[str, ...], as_json: bool) -> None:
    """Per partition: checkpoint, head, lag and checkpoint age."""
    app = get_app(ctx)
    names = list(pillow_names) or app.pillow_names
    statuses = []
    for name in names:
        with user_errors():
            pillow = app.get_pillow(name)
        statuses.append(pillow_status(app, pillow))
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in statuses], indent=2))
    else:
        _render(statuses)
