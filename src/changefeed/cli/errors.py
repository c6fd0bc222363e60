"""``changefeed errors list|show|retry|purge``: the error queue, for operators."""

from __future__ import annotations

import json
import time

import click

from changefeed.cli.common import UserError, cli, get_app, user_errors
from changefeed.errors import PARKED, PENDING


@cli.group("errors")
def errors_group() -> None:
    """The error queue: changes whose processing failed."""


@errors_group.command("list")
@click.option("--pillow")
@click.option("--status", type=click.Choice([PENDING, PARKED]))
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_cmd(
    ctx: click.Context, pillow: str | None, status: str | None, limit: int, as_json: bool
) -> None:
    """Queued errors, oldest first."""
    records = get_app(ctx).error_queue.list(pillow, status, limit)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in records], indent=2))
        return
    if not records:
        click.echo("no errors")
    for r in records:
        when = (
            "-"
            if r.next_attempt_at is None
            else time.strftime("%H:%M:%S", time.gmtime(r.next_attempt_at)) + "Z"
        )
        click.echo(
            f"#{r.id}\t{r.pillow}\t{r.processor}\t{r.document_id}\t{r.status}\t"
            f"attempts={r.attempts}\tnext={when}\t{r.error_type.rsplit('.', 1)[-1]}: {r.message[:120]}"
        )


@errors_group.command("show")
@click.argument("error_id", type=click.IntRange(min=1))
@click.pass_context
def show_cmd(ctx: click.Context, error_id: int) -> None:
    """One error with its stub and traceback."""
    record = get_app(ctx).error_queue.get(error_id)
    if record is None:
        raise UserError(f"no error #{error_id}")
    click.echo(json.dumps(record.to_dict(detail=True), indent=2))


@errors_group.command("retry")
@click.option("--pillow", help="Only this pillow's errors.")
@click.option("--id", "ids", type=int, multiple=True, help="Only these errors (repeatable).")
@click.option("--parked", "parked_only", is_flag=True, help="Only parked errors.")
@click.option(
    "--now/--schedule",
    default=True,
    show_default=True,
    help="Re-process at once, or only mark due for the retry runner.",
)
@click.pass_context
def retry_cmd(
    ctx: click.Context, pillow: str | None, ids: tuple[int, ...], parked_only: bool, now: bool
) -> None:
    """Make errors (parked ones too) due again, and by default re-process them now."""
    app = get_app(ctx)
    queue = app.error_queue
    marked = queue.make_due(pillow, list(ids) or None, parked_only)
    click.echo(f"{marked} error(s) marked due")
    if not now or not marked:
        return
    names = (
        [pillow]
        if pillow
        else sorted({r.pillow for r in queue.list(limit=100_000) if r.status == PENDING})
    )
    for name in names:
        if name not in app.pillow_names:
            click.echo(f"{name}: not defined in this app; left for its retry runner", err=True)
            continue
        with user_errors():
            p = app.get_pillow(name)
        ok, failed = p.retry_errors(limit=100_000)
        click.echo(f"{name}: {ok} succeeded, {failed} failed again")


@errors_group.command("purge")
@click.option("--pillow")
@click.option("--id", "ids", type=int, multiple=True)
@click.option("--status", type=click.Choice([PENDING, PARKED]))
@click.option("--older-than", type=click.FloatRange(min=0), help="Seconds.")
@click.option("--yes", is_flag=True, help="Purge everything matching without asking.")
@click.pass_context
def purge_cmd(
    ctx: click.Context,
    pillow: str | None,
    ids: tuple[int, ...],
    status: str | None,
    older_than: float | None,
    yes: bool,
) -> None:
    """Delete errors from the queue (their changes are then never retried)."""
    if not (pillow or ids or status or older_than is not None or yes):
        raise UserError("purge needs a filter (--pillow, --id, --status, --older-than) or --yes")
    with user_errors():
        n = get_app(ctx).error_queue.purge(pillow, list(ids) or None, status, older_than)
    click.echo(f"{n} error(s) purged")
