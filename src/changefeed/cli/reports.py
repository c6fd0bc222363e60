"""``changefeed reports list|validate|rebuild|add|remove|enable|reload``: configurable report
tables, and the data sources of `ReportTablesProcessor`s."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

import click
from sqlalchemy.exc import SQLAlchemyError

from changefeed.app import App
from changefeed.cli.common import UserError, cli, get_app, user_errors
from changefeed.cli.reindex import REBUILD_ERRORS, resume_options
from changefeed.processors.reports import (
    ReportConfigError,
    ReportTableProcessor,
    ReportTablesProcessor,
    SelectionError,
    SQLDataSourceProvider,
    StateStore,
    load_data_source,
)
from changefeed.processors.reports.states import BACKFILLING, QUARANTINED
from changefeed.rebuild import rebuild

P = TypeVar("P")


def _processors_of(app: App, kind: type[P]) -> list[tuple[str, P]]:
    """Every processor of type ``kind`` of the app's pillows, as (pillow name, processor);
    the others are closed."""
    found: list[tuple[str, P]] = []
    for name in app.pillow_names:
        with user_errors(ReportConfigError, SelectionError):
            pillow = app.get_pillow(name)
        pillow.change_feed.close()
        for processor in pillow.processors:
            if isinstance(processor, kind):
                found.append((name, processor))
            else:
                processor.close()
    return found


def report_processors(app: App) -> list[tuple[str, ReportTableProcessor]]:
    """Every report table of the app's pillows, as (pillow name, processor)."""
    return _processors_of(app, ReportTableProcessor)


def tables_processors(app: App) -> list[tuple[str, ReportTablesProcessor]]:
    """Every `ReportTablesProcessor` of the app's pillows, as (pillow name, processor)."""
    return _processors_of(app, ReportTablesProcessor)


@cli.group("reports")
def reports_group() -> None:
    """Configurable report tables (data sources defined in JSON or YAML)."""


@reports_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per data source.")
@click.option(
    "--check",
    is_flag=True,
    help="Exit 1 naming data sources in no selection or in several, or that do not validate.",
)
@click.pass_context
def list_cmd(ctx: click.Context, as_json: bool, check: bool) -> None:
    """The app's report data sources: pillow, table, state (live, back-filling with its
    progress, quarantined with its reason, removed) and columns."""
    app = get_app(ctx)
    entries: list[dict[str, object]] = []
    for pillow, proc in report_processors(app):
        entries.append(
            {
                "name": proc.config.name,
                "pillow": pillow,
                "table": proc.table.name,
                "columns": [f"{c.name}:{c.type}" for c in proc.config.columns],
            }
        )
        proc.close()
    multis = tables_processors(app)
    try:
        with user_errors(ReportConfigError, SQLAlchemyError):
            for pillow, multi in multis:
                stored = multi.states.read()
                for config in multi.selected():
                    state = stored.get(config.name)
                    entry: dict[str, object] = {"name": config.name, "state": "new"}
                    if state is not None:
                        entry = state.to_dict()
                    entry.update(pillow=pillow, table=config.table)
                    entry["columns"] = [f"{c.name}:{c.type}" for c in config.columns]
                    entries.append(entry)
                for where, message in multi.invalid_data_sources().items():
                    entries.append(
                        {"name": where, "pillow": pillow, "state": "invalid", "reason": message}
                    )
            problems = _selection_problems(multis) if check else []
            if check:
                problems += [f"{e['name']}: invalid ({e['reason']})" for e in entries
                             if e.get("state") == "invalid"]  # fmt: skip
    finally:
        for _, multi in multis:
            multi.close()
    for entry in entries:
        if as_json:
            click.echo(json.dumps(entry, sort_keys=True))
            continue
        if entry.get("state") == "invalid":
            click.echo(f"{entry['name']}\tpillow={entry['pillow']}\tskipped: {entry['reason']}")
            continue
        extra = ""
        if "state" in entry:
            extra = f"\tstate={entry['state']}"
            if entry.get("state") == BACKFILLING:
                extra += f" ({entry.get('progress', 0)} done)"
            if entry.get("reason"):
                extra += f" ({entry['reason']})"
        listed = entry["columns"]
        columns = ", ".join(map(str, listed)) if isinstance(listed, list) else ""
        click.echo(
            f"{entry['name']}\tpillow={entry['pillow']}\ttable={entry['table']}{extra}"
            f"\tcolumns={columns}"
        )
    if not entries and not as_json:
        click.echo("no report tables defined")
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        ctx.exit(1)


def _selection_problems(multis: list[tuple[str, ReportTablesProcessor]]) -> list[str]:
    """Data sources that no pillow's selection takes, or that several take."""
    takers: dict[str, list[str]] = {}
    for pillow, multi in multis:
        for config in multi.provider.get_data_sources():
            names = takers.setdefault(config.name, [])
            if multi.selection.selects(config):
                names.append(pillow)
    problems = []
    for name, pillows in sorted(takers.items()):
        if not pillows:
            problems.append(f"{name}: in no pillow's selection")
        elif len(pillows) > 1:
            problems.append(f"{name}: in several pillows' selections ({', '.join(pillows)})")
    return problems


def _sql_provider(app: App, pillow: str | None) -> tuple[str, SQLDataSourceProvider]:
    """The table of data sources that ``add``/``remove`` edit: the one that pillows read
    their data sources from, or that of the pillow named ``--pillow``."""
    multis = tables_processors(app)
    for _, multi in multis:
        multi.close()
    candidates = [
        (name, m.provider) for name, m in multis if isinstance(m.provider, SQLDataSourceProvider)
    ]
    if pillow is not None:
        candidates = [(name, p) for name, p in candidates if name == pillow]
    if not candidates:
        where = f"pillow {pillow!r} does not read" if pillow else "no pillow reads"
        raise UserError(
            f"{where} its report data sources from a table (ReportTablesProcessor with a "
            "SQLDataSourceProvider)"
        )
    tables = {
        (p.engine.url.render_as_string(hide_password=False), p.table.name) for _, p in candidates
    }
    if len(tables) > 1:
        names = ", ".join(name for name, _ in candidates)
        raise UserError(f"several pillows read data sources from a table ({names}): pick --pillow")
    return candidates[0]


@reports_group.command("add")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--pillow", help="The pillow whose data source table gets it (when several).")
@click.pass_context
def add_cmd(ctx: click.Context, file: Path, pillow: str | None) -> None:
    """Add a data source (or replace the one of its name) to the table a pillow reads its
    data sources from; running pillows pick it up at once (as after changefeed reports reload)."""
    name, provider = _sql_provider(get_app(ctx), pillow)
    with user_errors(ReportConfigError, SQLAlchemyError):
        config = provider.add(file)
        StateStore(provider.engine).request_reload()
    click.echo(f"added {config.name} (table {config.table}) to the data sources of {name}")
    provider.close()


@reports_group.command("remove")
@click.argument("name")
@click.option("--pillow", help="The pillow whose data source table loses it (when several).")
@click.pass_context
def remove_cmd(ctx: click.Context, name: str, pillow: str | None) -> None:
    """Remove a data source from the table a pillow reads its data sources from; its report
    table is kept (dropped by a processor made with drop_removed=True)."""
    pillow_name, provider = _sql_provider(get_app(ctx), pillow)
    with user_errors(SQLAlchemyError):
        removed = provider.remove(name)
        if removed:
            StateStore(provider.engine).request_reload()
    provider.close()
    if not removed:
        raise UserError(f"no data source {name!r} in the data sources of {pillow_name}")
    click.echo(f"removed {name} from the data sources of {pillow_name}")


def _state_stores(app: App) -> list[StateStore]:
    """One state store per reports database of the app's `ReportTablesProcessor`s."""
    stores: dict[str, StateStore] = {}
    for _, multi in tables_processors(app):
        url = multi.engine.url.render_as_string(hide_password=False)
        stores.setdefault(url, StateStore(multi.engine))
    return list(stores.values())


@reports_group.command("enable")
@click.argument("name")
@click.pass_context
def enable_cmd(ctx: click.Context, name: str) -> None:
    """Lift the quarantine of a data source: the running pillow back-fills what it skipped
    and writes it again."""
    stores = _state_stores(get_app(ctx))
    with user_errors(SQLAlchemyError):
        for store in stores:
            state = store.read().get(name)
            if state is None:
                continue
            if state.state != QUARANTINED:
                raise UserError(f"data source {name!r} is {state.state}, not quarantined")
            store.request_backfill(name)
            click.echo(f"enabled {name}: it is back-filled, then written again")
            return
    raise UserError(f"no data source {name!r} known to the reports databases")


@reports_group.command("reload")
@click.pass_context
def reload_cmd(ctx: click.Context) -> None:
    """Make running pillows read their data sources again now (not only every
    refresh_interval)."""
    stores = _state_stores(get_app(ctx))
    if not stores:
        raise UserError("no pillow has a ReportTablesProcessor")
    with user_errors(SQLAlchemyError):
        for store in stores:
            generation = store.request_reload()
    click.echo(f"reload requested ({len(stores)} reports database(s), generation {generation})")


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


def _request_rebuild(app: App, name: str) -> bool:
    """Ask the running pillow whose `ReportTablesProcessor` takes data source ``name`` to
    back-fill it again (a shadow rebuild and a swap); False when none takes it."""
    multis = tables_processors(app)
    try:
        with user_errors(ReportConfigError, SQLAlchemyError):
            for pillow, multi in multis:
                if name not in {c.name for c in multi.selected()}:
                    continue
                state = multi.states.read().get(name)
                if state is None:
                    raise UserError(
                        f"data source {name!r} is not bootstrapped yet (pillow {pillow})"
                    )
                if state.state == QUARANTINED:
                    raise UserError(
                        f"data source {name!r} is quarantined ({state.reason}): "
                        f"`changefeed reports enable {name}` back-fills it"
                    )
                multi.states.request_backfill(name)
                click.echo(
                    f"rebuild of {name} requested: pillow {pillow} back-fills it into a shadow "
                    "table and swaps it in while it runs (see `changefeed reports list`)",
                    err=True,
                )
                return True
    finally:
        for _, multi in multis:
            multi.close()
    return False


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
    if not matches and _request_rebuild(app, name):
        return
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
