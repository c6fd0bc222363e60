"""``changefeed reports list|validate|rebuild``: configurable report tables."""

from __future__ import annotations

from pathlib import Path

import click

from changefeed.app import App
from changefeed.cli.common import UserError, cli, get_app, user_errors
from changefeed.cli.reindex import REBUILD_ERRORS, resume_options
from changefeed.processors.reports import ReportConfigError, ReportTableProcessor, load_data_source
from changefeed.rebuild import rebuild


def report_processors(app: App) -> list[tuple[str, ReportTableProcessor]]:
    """Every report table of the app's pillows, as (pillow name, processor)."""
    found = []
    for name in app.pillow_names:
        with user_errors(ReportConfigError):
            pillow = app.get_pillow(name)
        pillow.change_feed.close()
        for processor in pillow.processors:
            if isinstance(processor, ReportTableProcessor):
                found.append((name, processor))
            else:
                processor.close()
    return found


@cli.group("reports")
def reports_group() -> None:
    """Configurable report tables (data sources defined in JSON or YAML)."""


@reports_group.command("list")
@click.pass_context
def list_cmd(ctx: click.Context) -> None:
    """The app's report data sources: pillow, table and columns."""
    found = report_processors(get_app(ctx))
    if not found:
        click.echo("no report tables defined")
    for pillow, proc in found:
        columns = ", ".join(f"{c.name}:{c.type}" for c in proc.config.columns)
        click.echo(
            f"{proc.config.name}\tpillow={pillow}\ttable={proc.table.name}\tcolumns={columns}"
        )
        proc.close()


@reports_group.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def validate_cmd(files: tuple[Path, ...]) -> None:
    """Check data source files; the first error names the file and the field at fault."""
    for file in files:
        with user_errors(ReportConfigError):
            config = load_data_source(file)
        click.echo(
            f"{file}: ok ({config.name} -> table {config.table}, {len(config.columns)} columns)"
        )


@reports_group.command("rebuild")
@click.argument("name")
@resume_options
@click.pass_context
def rebuild_cmd(
    ctx: click.Context, name: str, resume: bool | None, chunk_size: int, no_progress: bool
) -> None:
    """Rebuild one report table from the pillow's document stores without downtime.

    A shadow table is filled with the configured definition while the live one keeps
    serving, changes written meanwhile are replayed from the log, then the shadow replaces
    the live table in one transaction. The pillow's checkpoint is left alone.
    """
    app = get_app(ctx)
    found = report_processors(app)
    matches = [(pillow, proc) for pillow, proc in found if proc.config.name == name]
    for _, proc in found:
        proc.close()
    if not matches:
        known = ", ".join(sorted(p.config.name for _, p in found)) or "none"
        raise UserError(f"unknown report {name!r} (known: {known})")
    if len(matches) > 1:
        pillows = ", ".join(p for p, _ in matches)
        raise UserError(
            f"report {name!r} is fed by several pillows ({pillows}); rebuild with "
            "`changefeed reindex PILLOW --reset`"
        )
    pillow, proc = matches[0]
    with user_errors(*REBUILD_ERRORS):
        results = rebuild(
            app,
            pillow,
            [proc.name],
            resume=resume,
            chunk_size=chunk_size,
            show_progress=not no_progress,
        )
    for result in results:
        click.echo(result.describe(), err=True)
        if result.interrupted:
            click.echo(f"run `changefeed reports rebuild {name}` to resume", err=True)
