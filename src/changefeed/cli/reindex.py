"""``changefeed reindex PILLOW`` and ``changefeed bootstrap [PILLOW]...``: (re)building a
pillow's outputs, from its document stores or from nothing."""

from __future__ import annotations

import click

from changefeed.cli.common import F, UserError, cli, get_app, user_errors
from changefeed.processors.reports import ReportSchemaError
from changefeed.reindex import ReindexError, ReindexResult, reindex

REBUILD_ERRORS = (ReindexError, ReportSchemaError)
"""Errors of a rebuild that the user fixes (config, schema), reported without a traceback."""


def describe(result: ReindexResult) -> str:
    how = "resumed, " if result.resumed else ""
    if result.interrupted:
        return (
            f"{result.job}: stopped after {result.documents} documents ({how}progress saved); "
            f"run `changefeed reindex {result.pillow} --resume` to continue"
        )
    return (
        f"{result.job}: {how}{result.documents} documents from the stores, "
        f"{result.caught_up} changes replayed from the log, {result.failures} failures "
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
@click.pass_context
def reindex_cmd(
    ctx: click.Context,
    pillow_name: str,
    resume: bool | None,
    chunk_size: int,
    no_progress: bool,
    reset: bool,
) -> None:
    """Rebuild a pillow's output from its document stores (resumable; the live pillow may
    keep running)."""
    if reset and resume:
        raise UserError("--reset starts over: it cannot be combined with --resume")
    app = get_app(ctx)
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


@cli.command("bootstrap")
@click.argument("pillow_names", nargs=-1, metavar="[PILLOW]...")
@click.pass_context
def bootstrap_cmd(ctx: click.Context, pillow_names: tuple[str, ...]) -> None:
    """Run the processors' one-time setup (create indexes, tables; add new columns) for the
    given pillows, or all of them. ``changefeed run`` does this too before processing."""
    app = get_app(ctx)
    names = list(pillow_names) or app.pillow_names
    if not names:
        raise UserError("no pillows defined (point --app or CHANGEFEED_APP at your changefeed.App)")
    for name in names:
        with user_errors(*REBUILD_ERRORS):
            pillow = app.get_pillow(name)
            try:
                pillow.bootstrap()
            finally:
                for processor in pillow.processors:
                    processor.close()
                pillow.change_feed.close()
        click.echo(f"{name}: bootstrapped {', '.join(p.name for p in pillow.processors)}")
