"""``changefeed errors list|show|retry|purge``: the error queue, for operators.

Entries whose pillow is not in the app are *orphaned*: no retry runner visits them, so they
would stay pending forever. ``errors list`` marks them and ``errors purge --orphaned``
removes them. "In the app" means any registered runnable: the Couch bridge queues errors
too, and the retry runner visits it.
"""

from __future__ import annotations

import json

import click

from changefeed.app import App
from changefeed.cli.common import UserError, cli, get_app, user_errors
from changefeed.cli.output import escape, human, plural, show_text, when
from changefeed.cli.params import ENTRY_ID, LIMIT
from changefeed.errors import PARKED, PENDING, ErrorRecord
from changefeed.identifiers import redact_secrets
from changefeed.pillow import Pillow
from changefeed.runner import ErrorRetrier

ORPHANED = "orphaned"
RETRY_PAGE = 500
"""Entries re-processed per page of a bulk retry: memory stays bounded whatever the queue."""


def _check_pillow(app: App, pillow: str | None) -> None:
    """A pillow that is neither in the app nor in the queue is a typo: say so (exit 2)."""
    if pillow is None or pillow in app.runnable_names:
        return
    if pillow in app.error_queue.pillows():
        return
    known = ", ".join(app.pillow_names) or "none"
    raise UserError(f"unknown pillow {pillow!r} (pillows of this app: {known})")


@cli.group("errors")
def errors_group() -> None:
    """The error queue: changes whose processing failed."""


@errors_group.command("list")
@click.option("--pillow")
@click.option("--status", type=click.Choice([PENDING, PARKED]))
@click.option("--orphaned", is_flag=True, help="Only entries of pillows not in the app.")
@click.option("--limit", type=LIMIT, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_cmd(
    ctx: click.Context,
    pillow: str | None,
    status: str | None,
    orphaned: bool,
    limit: int,
    as_json: bool,
) -> None:
    """Queued errors, oldest first. Entries of pillows not in the app are shown as
    orphaned (never retried; 'errors purge --orphaned' removes them)."""
    app = get_app(ctx, read_only=True)
    _check_pillow(app, pillow)
    names = app.runnable_names
    records = app.error_queue.list(pillow, status, limit, not_pillows=names if orphaned else None)
    if as_json:
        out = []
        for r in records:
            entry = _without_secrets(r.to_dict())
            entry["orphaned"] = r.pillow not in names
            out.append(entry)
        click.echo(json.dumps(out, indent=2))
        return
    if not records:
        click.echo("no errors")
    for r in records:
        click.echo(_line(r, r.pillow not in names))
    orphans = {p: n for p, n in app.error_queue.pillows().items() if p not in names}
    if orphans and not as_json:
        listed = ", ".join(f"{p} ({n})" for p, n in orphans.items())
        click.echo(
            f"orphaned (pillow not in this app, never retried): {listed}; "
            "remove with: changefeed errors purge --orphaned",
            err=True,
        )


def _line(r: ErrorRecord, orphaned: bool) -> str:
    next_at = "-" if r.next_attempt_at is None else when(r.next_attempt_at)
    status = f"{r.status},{ORPHANED}" if orphaned else r.status
    return (
        f"#{r.id}\t{escape(r.pillow)}\t{escape(r.processor)}\t{escape(r.document_id)}\t{status}\t"
        f"attempts={r.attempts}\tnext={next_at}\t{escape(r.error_type.rsplit('.', 1)[-1])}: "
        f"{human(r.message[:120])}"
    )


@errors_group.command("show")
@click.argument("error_id", type=ENTRY_ID)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (exact values).")
@click.pass_context
def show_cmd(ctx: click.Context, error_id: int, as_json: bool) -> None:
    """One error with its stub and traceback."""
    record = get_app(ctx, read_only=True).error_queue.get(error_id)
    if record is None:
        raise UserError(f"no error #{error_id}")
    detail = _without_secrets(record.to_dict(detail=True))
    if as_json:
        click.echo(json.dumps(detail, indent=2))
        return
    click.echo(show_text(detail))


@errors_group.command("retry")
@click.option("--pillow", help="Only this pillow's errors.")
@click.option(
    "--id", "ids", type=ENTRY_ID, multiple=True, help="Exactly these errors (repeatable)."
)
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
    """Make errors (parked ones too) due again, and by default re-process them now.

    With '--id' exactly those entries are retried. A retry that fails again counts as one
    more attempt (and parks the entry again past the maximum)."""
    app = get_app(ctx)
    queue = app.error_queue
    _check_pillow(app, pillow)
    if pillow is not None and pillow not in app.runnable_names:
        raise UserError(
            f"pillow {pillow!r} is not in this app: its errors are orphaned and cannot be "
            "retried (remove them with: changefeed errors purge --orphaned)"
        )
    if ids:
        _retry_ids(app, list(dict.fromkeys(ids)), pillow, parked_only, now)
        return
    marked = queue.make_due(pillow, None, parked_only)
    started = queue.clock.time()  # everything marked is due by now; what fails again is later
    click.echo(f"{plural(marked, 'error')} marked due")
    if not now or not marked:
        return
    names = [pillow] if pillow else list(queue.pillows())
    for name in names:
        if name not in app.runnable_names:
            click.echo(f"{escape(name)}: not in this app (orphaned); not retried", err=True)
            continue
        with user_errors():
            target = app.get_runnable(name)
        ok = failed = 0
        while True:  # a page at a time; entries that fail again are due later, so this ends
            if isinstance(target, Pillow):
                done = target.runner.retry_errors(limit=RETRY_PAGE, now=started)
            elif isinstance(target, ErrorRetrier):  # the Couch bridge: due entries only
                done = target.retry_errors(limit=RETRY_PAGE)
            else:
                break
            ok, failed = ok + done[0], failed + done[1]
            if sum(done) < RETRY_PAGE:
                break
        click.echo(f"{name}: {ok} succeeded, {failed} failed again")


def _retry_ids(app: App, ids: list[int], pillow: str | None, parked_only: bool, now: bool) -> None:
    queue = app.error_queue
    records = []
    for error_id in ids:
        record = queue.get(error_id)
        if record is None:
            raise UserError(f"no error #{error_id}")
        if pillow is not None and record.pillow != pillow:
            raise UserError(f"error #{error_id} belongs to pillow {record.pillow!r}")
        if record.pillow not in app.runnable_names:
            raise UserError(
                f"error #{error_id} is orphaned: pillow {record.pillow!r} is not in this app"
            )
        if record.pillow not in app.pillow_names:
            raise UserError(
                f"error #{error_id} belongs to {record.pillow!r}, which retries its errors "
                f"all at once: changefeed errors retry --pillow {record.pillow}"
            )
        if parked_only and record.status != PARKED:
            continue
        records.append(record)
    marked = queue.make_due(ids=[r.id for r in records]) if records else 0
    click.echo(f"{plural(marked, 'error')} marked due")
    if not now or not records:
        return
    by_pillow: dict[str, list[int]] = {}
    for record in records:
        by_pillow.setdefault(record.pillow, []).append(record.id)
    for name, pillow_ids in by_pillow.items():
        with user_errors():
            runner = app.get_pillow(name).runner
        ok, failed = runner.retry_errors(ids=pillow_ids)
        click.echo(f"{name}: {ok} succeeded, {failed} failed again")


@errors_group.command("purge")
@click.option("--pillow")
@click.option("--id", "ids", type=ENTRY_ID, multiple=True)
@click.option("--status", type=click.Choice([PENDING, PARKED]))
@click.option("--older-than", type=click.FloatRange(min=0), help="Seconds.")
@click.option("--orphaned", is_flag=True, help="Entries of pillows not in the app.")
@click.option("--yes", is_flag=True, help="Purge everything matching without asking.")
@click.pass_context
def purge_cmd(
    ctx: click.Context,
    pillow: str | None,
    ids: tuple[int, ...],
    status: str | None,
    older_than: float | None,
    orphaned: bool,
    yes: bool,
) -> None:
    """Delete errors from the queue (their changes are then never retried)."""
    if not (pillow or ids or status or older_than is not None or orphaned or yes):
        raise UserError(
            "purge needs a filter (--pillow, --id, --status, --older-than, --orphaned) or --yes"
        )
    app = get_app(ctx)
    _check_pillow(app, pillow)
    with user_errors():
        n = app.error_queue.purge(
            pillow,
            list(ids) or None,
            status,
            older_than,
            not_pillows=app.runnable_names if orphaned else None,
        )
    click.echo(f"{plural(n, 'error')} purged")


def _without_secrets(entry: dict[str, object]) -> dict[str, object]:
    """An entry with credentials hidden in the texts an exception carried (a message that
    quotes a database URL): JSON stays exact otherwise, but never shows a password."""
    for key in ("message", "traceback"):
        value = entry.get(key)
        if isinstance(value, str):
            entry[key] = redact_secrets(value)
    return entry
