"""``changefeed reindex PILLOW`` and ``changefeed bootstrap [PILLOW]...``: (re)building a
pillow's outputs, from its document stores or from nothing."""

from __future__ import annotations

import click

from changefeed.app import NO_APP
from changefeed.cli.common import F, UserError, cli, get_app, user_errors
from changefeed.cli.output import plural
from changefeed.pillow import Pillow
from changefeed.processors.elastic.errors import ElasticBootstrapError
from changefeed.processors.reports import ReportSchemaError
from changefeed.rebuild import rebuild, rebuild_pending, rebuildable
from changefeed.reindex import ReindexError, ReindexResult, reindex

INTERRUPTED = 130
"""Exit code of a rebuild stopped by SIGINT/SIGTERM (the shell's 128 + SIGINT): its progress
is saved, but it did not finish, so scripts and cron must not take it for a success."""

REBUILD_ERRORS = (ReindexError, ReportSchemaError, ElasticBootstrapError)
"""Errors of a rebuild that the user fixes (config, schema), reported without a traceback."""


def describe(result: ReindexResult) -> str:
    how = "resumed, " if result.resumed else ""
    if result.interrupted:
        return (
            f"{result.job}: stopped after {plural(result.documents, 'document')} "
            f"({how}progress saved); run `changefeed reindex {result.pillow} --resume` to "
            "continue"
        )
    return (
        f"{result.job}: {how}{plural(result.documents, 'document')} from the stores, "
        f"{plural(result.caught_up, 'change')} replayed from the log, "
        f"{plural(result.failures, 'failure')} "
        f"(see `changefeed errors`), {result.seconds:.1f}s"
    )


def resume_options(func: F) -> F:
    """Options shared by ``reindex`` and ``reports rebuild``."""
    func = click.option("--no-progress", is_flag=True, help="No progress bar.")(func)
    func = click.option(
        "--chunk-size",
        type=click.IntRange(min=1),
        default=1000,
        show_default=True,
        help="Documents fetched and processed per batch.",
    )(func)
    return click.option(
        "--resume/--restart",
        default=None,
        help="Resume an interrupted run, or start over (default: resume if one was interrupted).",
    )(func)


@cli.command("reindex")
@click.argument("pillow_name", metavar="PILLOW")
@resume_options
@click.option(
    "--reset",
    is_flag=True,
    help="Clear the processors' output first (e.g. drop and recreate report tables).",
)
@click.option(
    "--new-index",
    is_flag=True,
    help="Build new Elasticsearch indexes (and report tables) next to the live ones and "
    "swap them in (automatic when an index's mappings or settings changed).",
)
@click.pass_context
def reindex_cmd(
    ctx: click.Context,
    pillow_name: str,
    resume: bool | None,
    chunk_size: int,
    no_progress: bool,
    reset: bool,
    new_index: bool,
) -> None:
    """Rebuild a pillow's output from its document stores (resumable; the live pillow may
    keep running).

    With --new-index (or when an Elasticsearch processor's mappings or settings changed),
    its Elasticsearch indexes and report tables are built next to the live ones and swapped
    in atomically; other processors are left alone."""
    if reset and resume:
        raise UserError("--reset starts over: it cannot be combined with --resume")
    if new_index and reset:
        raise UserError("--new-index builds new output next to the old: it takes no --reset")
    app = get_app(ctx)
    if not new_index and not reset:
        with user_errors(*REBUILD_ERRORS):
            new_index = _mapping_changed(app.get_pillow(pillow_name))
        if new_index:
            click.echo(
                f"{pillow_name}: Elasticsearch mappings or settings changed: building new "
                "indexes and swapping the aliases",
                err=True,
            )
    if new_index:
        with user_errors(*REBUILD_ERRORS):
            results = rebuild(
                app,
                pillow_name,
                resume=False if resume is None else resume,
                chunk_size=chunk_size,
                show_progress=not no_progress,
                on_result=lambda r: click.echo(r.describe(), err=True),
            )
        if results and results[-1].interrupted:
            click.echo(f"run `changefeed reindex {pillow_name} --new-index` again", err=True)
            ctx.exit(INTERRUPTED)
        return
    with user_errors(*REBUILD_ERRORS):
        result = reindex(
            app,
            pillow_name,
            resume=resume,
            reset=reset,
            chunk_size=chunk_size,
            show_progress=not no_progress,
        )
    click.echo(describe(result), err=True)
    if result.interrupted:
        ctx.exit(INTERRUPTED)


def _mapping_changed(pillow: Pillow) -> bool:
    """True when an Elasticsearch processor's alias points at an index of other mappings."""
    try:
        return any(p.output_outdated() for p in rebuildable(pillow))
    finally:
        for processor in pillow.processors:
            processor.close()
        pillow.change_feed.close()


@cli.command("bootstrap")
@click.argument("pillow_names", nargs=-1, metavar="[PILLOW]...")
@click.pass_context
def bootstrap_cmd(ctx: click.Context, pillow_names: tuple[str, ...]) -> None:
    """Run the processors' one-time setup (create indexes and tables) for the given pillows,
    or all of them; a report table whose definition changed is rebuilt next to the live one
    and swapped in (or refused, with auto_rebuild: false). 'changefeed run' does this too
    before processing."""
    app = get_app(ctx)
    names = list(pillow_names) or app.pillow_names
    if not names:
        raise UserError(f"nothing to bootstrap: {NO_APP}")
    for name in names:
        with user_errors(*REBUILD_ERRORS):
            pillow = app.get_pillow(name)
            try:
                pillow.bootstrap()
                for result in rebuild_pending(pillow):
                    click.echo(result.describe(), err=True)
            finally:
                for processor in pillow.processors:
                    processor.close()
                pillow.change_feed.close()
        click.echo(f"{name}: bootstrapped {', '.join(p.name for p in pillow.processors)}")
