"""``changefeed run``, ``pillows`` and ``status``."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from changefeed.cli.common import UserError, cli, get_app, user_errors
from changefeed.status import PillowStatus, pillow_status, replication_slot_status


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
@click.option("--all", "all_pillows", is_flag=True, help="Run every pillow under the supervisor.")
@click.option("--num-processes", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--process-number", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--once", is_flag=True, help="Stop when caught up instead of running forever.")
@click.option("--no-bootstrap", is_flag=True, help="Skip the processors' bootstrap.")
@click.option(
    "--metrics-port", type=click.IntRange(0, 65535), help="Serve Prometheus /metrics on this port."
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
@click.pass_context
def run_cmd(
    ctx: click.Context,
    pillow_names: tuple[str, ...],
    all_pillows: bool,
    num_processes: int,
    process_number: int,
    once: bool,
    no_bootstrap: bool,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Run one pillow in this process (SIGTERM/SIGINT stop it after the current batch).

    With --all or several names, run each as a child process of the supervisor."""
    if process_number >= num_processes:
        raise UserError(f"--process-number must be below --num-processes ({num_processes})")
    if all_pillows or len(pillow_names) > 1:
        if once or num_processes != 1:
            raise UserError("--once and --num-processes apply to one pillow, not to --all")
        from changefeed.cli.supervise import run_supervised

        code = run_supervised(
            ctx,
            pillow_names,
            all_pillows=all_pillows,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            run_args=("--no-bootstrap",) if no_bootstrap else (),
        )
        ctx.exit(code)
    if len(pillow_names) != 1:
        raise UserError("run takes a pillow name (or several, or --all for every pillow)")
    app = get_app(ctx)
    with user_errors():
        pillow = app.get_pillow(pillow_names[0])
    if metrics_port is not None or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from changefeed.metrics import PillowMetrics, StatusCollector, serve

        metrics = PillowMetrics().attach(pillow)
        if metrics_port is not None:
            metrics.registry.register(StatusCollector(app, [pillow.name]))
            try:
                serve(metrics.registry, metrics_port, metrics_host)
            except OSError as exc:
                raise UserError(f"cannot listen on {metrics_host}:{metrics_port}: {exc}") from None
    if not no_bootstrap:
        pillow.bootstrap()
    pillow.install_signal_handlers()
    started = time.monotonic()
    total = pillow.run(forever=not once, num_processes=num_processes, process_number=process_number)
    elapsed = time.monotonic() - started
    click.echo(f"{pillow.name}: {total} changes read in {elapsed:.1f}s", err=True)


def _render(statuses: list[PillowStatus], slots: list[dict[str, Any]]) -> None:
    console = Console()
    table = Table("pillow", "topic", "partition", "checkpoint", "head", "lag", "checkpoint age")
    for st in statuses:
        for p in st.partitions:
            age = "never" if p.checkpoint_age is None else f"{p.checkpoint_age:.0f}s"
            table.add_row(
                st.pillow,
                p.topic,
                str(p.partition),
                "-" if p.checkpoint is None else str(p.checkpoint),
                str(p.head),
                str(p.lag),
                age,
            )
    console.print(table)
    for st in statuses:
        console.print(
            f"{st.pillow}: lag {st.lag}, errors pending {st.errors_pending}, parked {st.errors_parked}"
        )
        for note in st.notes:
            console.print(f"  note: {note}")
    for slot in slots:
        if slot.get("exists"):
            console.print(
                f"replication slot {slot['replication_slot']}: lag {slot['lag_bytes']} bytes, "
                f"retains {slot['retained_bytes']} bytes, "
                f"{'active' if slot['active'] else 'NOT ACTIVE'}"
            )
        else:
            reason = slot.get("error") or "does not exist"
            console.print(f"replication slot {slot['replication_slot']}: {reason}")


@cli.command("status")
@click.argument("pillow_names", nargs=-1, metavar="[PILLOW]...")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--watch",
    type=click.FloatRange(min=0.1),
    metavar="SECONDS",
    help="Refresh every SECONDS until interrupted (with --json: one JSON document per line).",
)
@click.option(
    "--slot",
    "slot_names",
    multiple=True,
    metavar="NAME",
    help="Also report this PostgreSQL CDC replication slot's lag (with --cdc-db).",
)
@click.option(
    "--cdc-db",
    envvar="CHANGEFEED_CDC_DB",
    metavar="URL",
    help="Database of --slot (default: $CHANGEFEED_CDC_DB).",
)
@click.pass_context
def status_cmd(
    ctx: click.Context,
    pillow_names: tuple[str, ...],
    as_json: bool,
    watch: float | None,
    slot_names: tuple[str, ...],
    cdc_db: str | None,
) -> None:
    """Per partition: checkpoint, head, lag and checkpoint age; error counts; the lag of
    the app's watched CDC replication slots. With --json, slots follow the pillows in the
    list as objects with a "replication_slot" key."""
    if slot_names and not cdc_db:
        raise UserError("--slot needs --cdc-db URL (or $CHANGEFEED_CDC_DB)")
    app = get_app(ctx)
    slot_specs = [*app.replication_slots, *((cdc_db or "", name) for name in slot_names)]
    names = list(pillow_names) or app.pillow_names
    pillows = []
    for name in names:
        with user_errors():
            pillows.append(app.get_pillow(name))

    def slots() -> list[dict[str, Any]]:
        return [replication_slot_status(url, name) for url, name in slot_specs]

    if watch is None:
        statuses = [pillow_status(app, pillow) for pillow in pillows]
        if as_json:
            click.echo(json.dumps([*(s.to_dict() for s in statuses), *slots()], indent=2))
        else:
            _render(statuses, slots())
        return
    console = Console()
    try:
        while True:
            statuses = [pillow_status(app, pillow) for pillow in pillows]
            if as_json:
                click.echo(json.dumps([*(s.to_dict() for s in statuses), *slots()]))
            else:
                console.clear()
                console.print(
                    f"every {watch:g}s: {time.strftime('%Y-%m-%d %H:%M:%S')}  (Ctrl-C to stop)"
                )
                _render(statuses, slots())
            time.sleep(watch)
    except KeyboardInterrupt:
        return
