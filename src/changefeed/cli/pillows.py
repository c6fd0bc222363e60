"""``changefeed run``, ``pillows`` and ``status``."""

from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from functools import partial
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from changefeed.app import NO_APP, App
from changefeed.batch import BatchReport
from changefeed.cli.common import UserError, cli, get_app, get_runnable, user_errors
from changefeed.cli.output import escape, human, is_terminal, plural, size, when
from changefeed.cli.reindex import REBUILD_ERRORS
from changefeed.cli.report_view import render_reports
from changefeed.cli.supervise import check_metrics_access, run_supervised
from changefeed.pillow import Pillow, PillowListener
from changefeed.rebuild import rebuilding
from changefeed.report_status import ReportsStatus, reports_or_error
from changefeed.report_usage import ReportUsageRecorder
from changefeed.runner import NotScalableError, Runnable, check_split, run_runnable
from changefeed.status import (
    PillowStatus,
    orphaned_errors,
    pillow_status,
    redacted,
    replication_slot_report,
    runnable_status,
)


def replication_slot_status(database_url: str, slot: str) -> dict[str, Any]:
    """A PostgreSQL CDC slot's lag (`changefeed.sources.postgres_cdc.slot_status`), for
    ``status``; an unreachable database is reported, not raised. The face knows the CDC
    module so that `changefeed.status` does not have to."""
    from changefeed.sources.postgres_cdc import slot_status

    return replication_slot_report(
        slot, partial(slot_status, database_url, slot), database_url=database_url
    )


@cli.command("pillows")
@click.pass_context
def pillows_cmd(ctx: click.Context) -> None:
    """List the pillows the app defines, with their topics, and its other runnables (Couch
    bridges, relays) with their kind."""
    app = get_app(ctx, read_only=True)
    if not app.runnable_names:
        click.echo(f"no pillows to list: {NO_APP}")
        return
    for name in app.pillow_names:
        with user_errors():
            pillow = app.get_pillow(name)
        procs = ", ".join(p.name for p in pillow.processors)
        click.echo(f"{name}\ttopics={','.join(pillow.change_feed.topics)}\tprocessors={procs}")
    for name in app.runnable_names:
        if name not in app.pillow_names:
            click.echo(f"{name}\tkind={get_runnable(app, name).health().kind}")


@cli.command("run")
@click.argument("pillow_names", nargs=-1, metavar="NAME...")
@click.option(
    "--all",
    "all_pillows",
    is_flag=True,
    help="Run every pillow and other runnable under the supervisor.",
)
@click.option("--num-processes", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--process-number", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--once", is_flag=True, help="Stop when caught up instead of running forever.")
@click.option("--no-bootstrap", is_flag=True, help="Skip the processors' bootstrap.")
@click.option(
    "--docs",
    metavar="F",
    help="Process exactly these documents now (ids one per line, or JSON lines of stubs, "
    "also as 'changes --json' and 'checkpoint dump-remaining' print them); no log read, no "
    "checkpoint moved.",
)
@click.option(
    "--metrics-port", type=click.IntRange(0, 65535), help="Serve Prometheus /metrics on this port."
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
@click.option(
    "--metrics-token",
    envvar="CHANGEFEED_METRICS_TOKEN",
    help="Token /metrics requires (needed when --metrics-host is not loopback; "
    "env CHANGEFEED_METRICS_TOKEN).",
)
@click.pass_context
def run_cmd(
    ctx: click.Context,
    pillow_names: tuple[str, ...],
    all_pillows: bool,
    num_processes: int,
    process_number: int,
    once: bool,
    no_bootstrap: bool,
    docs: str | None,
    metrics_port: int | None,
    metrics_host: str,
    metrics_token: str | None,
) -> None:
    """Run one pillow, Couch bridge or relay in this process (SIGTERM/SIGINT stop it after
    the current batch).

    With --all or several names, run each as a child process of the supervisor."""
    if docs is not None:
        from changefeed.cli.verify import run_docs_command

        run_docs_command(
            ctx, pillow_names, docs, bootstrap=not no_bootstrap, alone=not (all_pillows or once)
        )
        return
    if process_number >= num_processes:
        raise UserError(f"--process-number must be below --num-processes ({num_processes})")
    if metrics_port is not None:
        check_metrics_access(metrics_host, metrics_token)
    if all_pillows or len(pillow_names) > 1:
        if once or num_processes != 1:
            raise UserError("--once and --num-processes apply to one runnable, not to --all")
        code = run_supervised(
            ctx,
            pillow_names,
            all_pillows=all_pillows,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            metrics_token=metrics_token,
            run_args=("--no-bootstrap",) if no_bootstrap else (),
        )
        ctx.exit(code)
    if len(pillow_names) != 1:
        raise UserError("run takes a pillow name (or several, or --all for every pillow)")
    app = get_app(ctx)
    runnable = get_runnable(app, pillow_names[0])
    _serve_metrics(app, runnable, metrics_port, metrics_host, metrics_token)
    with user_errors(NotScalableError):
        check_split(num_processes, process_number, runnable.scalable)
    progress = _announce(app, runnable, num_processes, process_number, once)
    started = time.monotonic()
    try:
        total = _run_alone(
            app,
            runnable,
            forever=not once,
            num_processes=num_processes,
            process_number=process_number,
            bootstrap=not no_bootstrap,
        )
    finally:
        if progress is not None:
            progress.clear()
    click.echo(_done_line(runnable.name, total, time.monotonic() - started, progress), err=True)


def _serve_metrics(
    app: App, runnable: Runnable, port: int | None, host: str, token: str | None
) -> None:
    """A pillow's metrics: served on ``port``, or written for a supervisor that serves them
    (``PROMETHEUS_MULTIPROC_DIR`` set). Other runnables have none."""
    if not isinstance(runnable, Pillow):
        if port is not None:
            raise UserError(f"--metrics-port applies to pillows; {runnable.name!r} is not one")
        return
    if port is None and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    from changefeed.metrics import PillowMetrics, StatusCollector, serve

    metrics = PillowMetrics().attach(runnable)
    if port is None:
        return
    metrics.registry.register(StatusCollector(app, [runnable.name]))
    try:
        serve(metrics.registry, port, host, token=token)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc}") from None


def _announce(
    app: App, runnable: Runnable, num_processes: int, process_number: int, once: bool
) -> _Progress | None:
    """Say what starts; for a pillow, also count its batches (a live line on a terminal)
    and return the counter."""
    if not isinstance(runnable, Pillow):
        until = "until caught up" if once else "(Ctrl-C to stop)"
        click.echo(f"{escape(runnable.name)}: running {until}", err=True)
        return None
    saved = app.checkpoints.get(runnable.name)
    click.echo(_start_line(saved, runnable, num_processes, process_number, once), err=True)
    progress = _Progress(live=is_terminal())
    runnable.listeners.append(progress)
    return progress


def _run_alone(
    app: App,
    runnable: Runnable,
    *,
    forever: bool,
    num_processes: int,
    process_number: int,
    bootstrap: bool,
) -> int:
    """Run ``runnable`` in this process until stopped (or caught up); the changes read.

    A report table whose definition changed is rebuilt next to the running pillow; where
    its report tables spend their time is recorded for `status` and metrics."""
    with (
        user_errors(*REBUILD_ERRORS),
        rebuilding(
            app, runnable, forever=forever, num_processes=num_processes, bootstrap=bootstrap
        ),
        ReportUsageRecorder(runnable) if isinstance(runnable, Pillow) else nullcontext(),
    ):
        return run_runnable(
            runnable,
            forever=forever,
            num_processes=num_processes,
            process_number=process_number,
            bootstrap=bootstrap,
        )


def _done_line(name: str, total: int, elapsed: float, progress: _Progress | None) -> str:
    """The stop line: what was read and, for a pillow, what became of it."""
    done = f"{escape(name)}: {plural(total, 'change')} read in {elapsed:.1f}s"
    if progress is not None:
        # Read is not done: with Elasticsearch down, 3 read can be 0 processed, 3 queued.
        done += f": {progress.processed} processed, {progress.queued} queued as errors"
    return done


def _start_line(
    saved: dict[Any, int], pillow: Pillow, num_processes: int, process_number: int, once: bool
) -> str:
    """Which pillow reads what, from where: the first thing an operator wants to see."""
    feed = pillow.change_feed
    head = f"{escape(pillow.name)}: topics {escape(', '.join(feed.topics))}"
    if feed.uses_consumer_group:
        # Asks the log like the static case does, so an unreachable one is said before
        # anything else.
        total = len(feed.topic_partitions())
        where = f"its share of {total} partitions, assigned by the consumer group"
    else:
        parts = pillow.assigned_partitions(num_processes, process_number)
        where = "partitions " + (
            ", ".join(
                f"{escape(str(tp))} from {saved.get(tp, 'the start')}" for tp in sorted(parts)
            )
            or "none yet"
        )
    until = "until caught up" if once else "(Ctrl-C to stop)"
    return f"{head}; {where}; running {until}"


class _Progress(PillowListener):
    """Counts what batches did, for the stop line and, on a terminal, a live line:
    read, processed, queued, rate and lag (lag at most once a second: it asks the log)."""

    def __init__(self, live: bool) -> None:
        self.live = live
        self.read = self.processed = self.queued = 0
        self.started = time.monotonic()
        self._checkpoint: dict[Any, int] = {}
        self._lag: int | None = None
        self._lag_at = 0.0
        self._shown = False

    def on_batch(self, pillow: Pillow, report: BatchReport) -> None:
        self.read += report.changes
        self.queued += report.failures
        self.processed += max(report.unique - report.failures, 0)
        self._checkpoint.update(report.checkpoint)
        if not self.live:
            return
        now = time.monotonic()
        if now - self._lag_at >= 1.0:
            self._lag_at = now
            try:
                heads = pillow.change_feed.latest_offsets()
                self._lag = sum(
                    max(head - self._checkpoint.get(tp, head), 0) for tp, head in heads.items()
                )
            except Exception:  # noqa: BLE001 - progress is a nicety; never stop the pillow
                self._lag = None
        rate = self.read / max(now - self.started, 1e-6)
        lag = "?" if self._lag is None else str(self._lag)
        line = (
            f"read {self.read}, processed {self.processed}, queued {self.queued}, "
            f"{rate:.0f}/s, lag {lag}"
        )
        click.echo(f"\r\x1b[2K{line}", nl=False, err=True)
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            click.echo("\r\x1b[2K", nl=False, err=True)
            self._shown = False


_HEALTH_KEYS = ("runnable", "name", "kind", "state", "processed", "error", "partitions")
_POSITION_KEYS = ("topic", "partition", "checkpoint", "head", "lag", "checkpoint_age")
"""A runnable's partition fields: shown as rows of the table, not again on its line."""


def _render_runnable(console: Console, row: dict[str, Any]) -> None:
    """One line per non-pillow runnable: kind, state, then whatever detail its health adds
    (a bridge's seq and counts, a relay's batches), as words: times as times, no
    ``None``, no nested structures (those are in ``--json``)."""
    parts = [f"{row['runnable']} ({row.get('kind', '?')}): {row.get('state', '?')}"]
    if row.get("processed"):
        parts.append(f"processed {row['processed']}")
    for key, value in row.items():
        if key in _HEALTH_KEYS or (key in _POSITION_KEYS and row.get("partitions")):
            continue
        shown = _detail_value(key, value)
        if shown is not None:
            parts.append(f"{key.replace('_', ' ')} {shown}")
    if row.get("error"):
        parts.append(f"error: {row['error']}")
    console.print(human(", ".join(parts)), markup=False)


def _detail_value(key: str, value: Any) -> str | None:
    """A health detail value for reading; None when there is nothing to show."""
    if value is None or isinstance(value, dict):
        return None
    if isinstance(value, list):
        if any(isinstance(item, dict | list) for item in value):
            return None
        return ", ".join(map(str, value)) or "none"
    if key.endswith("_at") and isinstance(value, int | float) and not isinstance(value, bool):
        return when(value)
    if key.endswith("_age") and isinstance(value, int | float):
        return f"{value:.0f}s"
    return str(value)


def _runnable_rows(row: dict[str, Any]) -> list[tuple[str, ...]]:
    """Table rows for a runnable that reports partitions like a pillow (the Couch bridge)."""
    rows: list[tuple[str, ...]] = []
    for p in row.get("partitions") or ():
        if not isinstance(p, dict):
            continue
        age = p.get("checkpoint_age")
        rows.append(
            (
                escape(row["runnable"]),
                escape(p.get("topic", "?")),
                str(p.get("partition", "?")),
                "-" if p.get("checkpoint") is None else str(p["checkpoint"]),
                "?" if p.get("head") is None else str(p["head"]),
                "?" if p.get("lag") is None else str(p["lag"]),
                "never" if age is None else f"{age:.0f}s",
            )
        )
    return rows


def _render(
    statuses: list[PillowStatus],
    others: list[dict[str, Any]],
    slots: list[dict[str, Any]],
    orphans: list[dict[str, Any]] | None = None,
    reports: dict[str, list[ReportsStatus] | str] | None = None,
) -> None:
    console = Console()
    table = Table()
    extra_rows = [r for row in others for r in _runnable_rows(row)]
    for column, names in (
        ("pillow", [st.pillow for st in statuses] + [r[0] for r in extra_rows]),
        ("topic", [p.topic for st in statuses for p in st.partitions] + [r[1] for r in extra_rows]),
    ):
        # Names are never cut: two names with one prefix must stay two names when narrow.
        width = max([len(column), *(len(escape(n)) for n in names)])
        table.add_column(column, overflow="fold", min_width=width, no_wrap=False)
    for column in ("partition", "checkpoint", "head", "lag", "checkpoint age"):
        table.add_column(column)
    for st in statuses:
        for p in st.partitions:
            age = "never" if p.checkpoint_age is None else f"{p.checkpoint_age:.0f}s"
            table.add_row(
                escape(st.pillow),
                escape(p.topic),
                str(p.partition),
                "-" if p.checkpoint is None else f"{p.checkpoint}{'!' * p.beyond_head}",
                str(p.head),
                str(p.lag),
                age,
            )
    for extra in extra_rows:
        table.add_row(*extra)
    console.print(table)
    for st in statuses:
        console.print(
            f"{escape(st.pillow)}: lag {st.lag}, errors pending {st.errors_pending}, "
            f"parked {st.errors_parked}",
            markup=False,
        )
        for note in st.notes:
            console.print(f"  note: {human(note)}", markup=False)
        found = (reports or {}).get(st.pillow, [])
        if isinstance(found, str):
            console.print(f"  report data sources unavailable: {human(found)}", markup=False)
        for report in found if isinstance(found, list) else []:
            render_reports(console, report)
    for row in others:
        _render_runnable(console, row)
    for slot in slots:
        if slot.get("exists"):
            console.print(
                f"replication slot {escape(slot['replication_slot'])}: lag "
                f"{size(slot['lag_bytes'])}, retains {size(slot['retained_bytes'])}, "
                f"{'active' if slot['active'] else 'NOT ACTIVE'}",
                markup=False,
            )
        else:
            reason = human(slot.get("error") or "does not exist")
            console.print(
                f"replication slot {escape(slot['replication_slot'])}: {reason}", markup=False
            )
    if orphans:
        listed = ", ".join(f"{escape(o['orphaned_errors'])} ({o['entries']})" for o in orphans)
        console.print(
            f"orphaned errors (pillow not in this app, never retried): {listed}; "
            "remove with: changefeed errors purge --orphaned",
            markup=False,
        )


@cli.command("status")
@click.argument("pillow_names", nargs=-1, metavar="[NAME]...")
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
    """Per partition: checkpoint, head, lag and checkpoint age; error counts; the data
    sources of report pillows (ReportTablesProcessor: counts per state, the ones not live,
    the slowest data sources and domains; with --json every data source, under "reports");
    the state of the other runnables (Couch bridges, relays); the lag of the app's watched
    CDC replication slots; error-queue entries of pillows no longer in the app (orphaned).
    With --json, other
    runnables follow the pillows in the list as objects with a "runnable" key, then slots as
    objects with a "replication_slot" key, then orphaned entries as objects with an
    "orphaned_errors" key (the pillow's name) and "entries". Credentials in any URL or
    message are redacted."""
    if slot_names and not cdc_db:
        raise UserError("--slot needs --cdc-db URL (or $CHANGEFEED_CDC_DB)")
    app = get_app(ctx, read_only=True)
    slot_specs = [*app.replication_slots, *((cdc_db or "", name) for name in slot_names)]
    names = list(pillow_names) or app.runnable_names
    if not names and not slot_specs and not as_json:
        # An empty table looks like "all is well"; say what was (not) looked at.
        click.echo(
            f"no pillows to show: {NO_APP}; log {human(app.log_url)}, state {human(app.state_url)}"
        )
        return
    pillows: list[Pillow] = []
    others: list[Runnable] = []
    for name in names:
        runnable = get_runnable(app, name)
        if isinstance(runnable, Pillow):
            pillows.append(runnable)
        else:
            others.append(runnable)

    whole_app = not pillow_names

    def snapshot() -> tuple[
        list[PillowStatus], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]
    ]:
        orphans = orphaned_errors(app) if whole_app else {}
        return (
            [pillow_status(app, pillow) for pillow in pillows],
            [runnable_status(runnable) for runnable in others],
            [replication_slot_status(url, name) for url, name in slot_specs],
            [{"orphaned_errors": name, "entries": n} for name, n in orphans.items()],
        )

    def report_snapshot() -> dict[str, list[ReportsStatus] | str]:
        """The report data sources of the pillows that have some (or why they could not
        be read)."""
        found = {pillow.name: reports_or_error(pillow) for pillow in pillows}
        return {name: statuses for name, statuses in found.items() if statuses}

    def as_list(
        statuses: list[PillowStatus],
        reports: dict[str, list[ReportsStatus] | str],
        *rest: list[dict[str, Any]],
    ) -> list[Any]:
        rows: list[dict[str, Any]] = []
        for st in statuses:
            row = st.to_dict()
            found = reports.get(st.pillow)
            if isinstance(found, str):
                row["reports_error"] = found
            elif found:
                row["reports"] = [r.to_dict() for r in found]
            rows.append(row)
        rows += [row for more in rest for row in more]
        return redacted(rows)  # exact JSON, but no credential

    if watch is None:
        statuses, rows, slots, orphans = snapshot()
        reports = report_snapshot()
        if as_json:
            listed = as_list(statuses, reports, rows, slots, orphans)
            click.echo(json.dumps(listed, indent=2, default=str))
        else:
            _render(statuses, rows, slots, orphans, reports)
        return
    console = Console()
    try:
        while True:
            statuses, rows, slots, orphans = snapshot()
            reports = report_snapshot()
            if as_json:
                listed = as_list(statuses, reports, rows, slots, orphans)
                click.echo(json.dumps(listed, default=str))
            else:
                console.clear()
                console.print(
                    f"every {watch:g}s: {time.strftime('%Y-%m-%d %H:%M:%S')}  (Ctrl-C to stop)"
                )
                _render(statuses, rows, slots, orphans, reports)
            time.sleep(watch)
    except KeyboardInterrupt:
        return
