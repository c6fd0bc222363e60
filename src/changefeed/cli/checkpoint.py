"""``changefeed checkpoint show|set|reset|to-head|history|undo``."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from changefeed.change import TopicPartition
from changefeed.checkpoints import RESET, SET, TO_HEAD
from changefeed.cli.common import UserError, cli, get_app, get_runnable, user_errors
from changefeed.cli.output import escape, human, when
from changefeed.cli.params import ENTRY_ID, LIMIT, OFFSET, PARTITION
from changefeed.pillow import Pillow
from changefeed.runner import Checkpointed


@dataclass(frozen=True)
class _Subject:
    """What the checkpoint commands show and move: a pillow's checkpoints, or those of
    another runnable that keeps them per partition (the Couch bridge: docs/couchdb.md's
    replay is ``checkpoint reset couch-bridge-<db>``)."""

    name: str
    change_feed: Checkpointed
    replays_only: bool = False
    """Its position is opaque (a CouchDB seq) and its offset only counts what it read: a
    move to 0 replays from the start, any other would show a position it does not use."""


def _check_move(p: _Subject, to_zero: bool) -> None:
    """Refuse a move that a runnable reading from an opaque position would not follow."""
    if p.replays_only and not to_zero:
        raise UserError(
            f"{p.name!r} reads from an opaque position (a CouchDB seq): its checkpoint moves "
            "only to 0, to replay from the start ('checkpoint reset'), or back with "
            "'checkpoint undo'"
        )


def _pillow(ctx: click.Context, name: str) -> _Subject:
    app = get_app(ctx)
    runnable = get_runnable(app, name)
    if isinstance(runnable, Pillow):
        return _Subject(runnable.name, runnable.change_feed)
    if isinstance(runnable, Checkpointed):
        return _Subject(runnable.name, runnable, replays_only=True)
    raise UserError(f"{name!r} is not a pillow and keeps no checkpoints per partition")


@cli.group("checkpoint")
def checkpoint_group() -> None:
    """Inspect and move a pillow's checkpoints (every move is kept in a history)."""


@checkpoint_group.command("show")
@click.argument("pillow")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show_cmd(ctx: click.Context, pillow: str, as_json: bool) -> None:
    """Checkpoint per partition, with the head and when it was written."""
    get_app(ctx, read_only=True)
    p = _pillow(ctx, pillow)
    saved = get_app(ctx).checkpoints.get_detailed(p.name)
    heads = p.change_feed.latest_offsets()
    rows: list[dict[str, Any]] = []
    for tp in sorted(set(heads) | set(saved)):
        cp = saved.get(tp)
        rows.append(
            {
                "topic": tp.topic,
                "partition": tp.partition,
                "checkpoint": cp.offset if cp else None,
                "head": heads.get(tp),
                "updated_at": cp.updated_at if cp else None,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        written = when(r["updated_at"]) if r["updated_at"] else "never"
        offset = "-" if r["checkpoint"] is None else r["checkpoint"]
        click.echo(
            f"{r['topic']}[{r['partition']}]\tcheckpoint={offset}\thead={r['head']}\t{written}"
        )


@checkpoint_group.command("set")
@click.argument("pillow")
@click.argument("topic")
@click.argument("partition", type=PARTITION)
@click.argument("offset", type=OFFSET)
@click.option("--reason", default="set by operator", show_default=True)
@click.option(
    "--force",
    is_flag=True,
    help="Allow an offset past the head (changes published up to it will be skipped).",
)
@click.pass_context
def set_cmd(
    ctx: click.Context,
    pillow: str,
    topic: str,
    partition: int,
    offset: int,
    reason: str,
    force: bool,
) -> None:
    """Set one partition's checkpoint to OFFSET (at most the head unless --force)."""
    p = _pillow(ctx, pillow)
    tp = TopicPartition(topic, partition)
    if tp not in set(p.change_feed.topic_partitions()):
        raise UserError(f"pillow {pillow!r} does not read {tp}")
    # Past the head the pillow would silently skip every change published up to OFFSET,
    # and status would show no lag: almost always a typo or the wrong log.
    _check_move(p, to_zero=offset == 0)
    head = p.change_feed.latest_offsets().get(tp, 0) if offset else 0
    if offset > head and not force:
        raise UserError(
            f"offset {offset} is past the head of {tp} (head {head}); changes published up to "
            "it would be skipped: give --force if that is what you want"
        )
    _apply(ctx, p, {tp: offset}, reason, SET)


def _apply(
    ctx: click.Context, p: _Subject, offsets: dict[TopicPartition, int], reason: str, kind: str
) -> None:
    entries = get_app(ctx).checkpoints.set(p.name, offsets, reason=reason, kind=kind)
    for entry in entries:
        old = "-" if entry.old_offset is None else entry.old_offset
        click.echo(f"#{entry.id} {escape(str(entry.tp))}: {old} -> {entry.new_offset}")
    click.echo(_undo_hint([entry.id for entry in entries]), err=True)


def _undo_hint(ids: list[int]) -> str:
    """The exact undo command(s), with the entry numbers just written (one per partition)."""
    if not ids:
        return "nothing changed: the checkpoints were there already"
    return "undo with: " + "; ".join(f"changefeed checkpoint undo {i}" for i in ids)


def _move_all(ctx: click.Context, pillow: str, topic: str | None, to_head: bool) -> None:
    """Move every partition (of ``topic``) to the earliest offset or to the head."""
    p = _pillow(ctx, pillow)
    _check_move(p, to_zero=not to_head)
    feed = p.change_feed
    where = feed.latest_offsets() if to_head else feed.earliest_offsets()
    offsets = {tp: off for tp, off in where.items() if topic in (None, tp.topic)}
    if not offsets:
        raise UserError(f"pillow {pillow!r} has no partitions of topic {topic!r}")
    if to_head:
        _apply(ctx, p, offsets, "moved to head by operator", TO_HEAD)
    else:
        _apply(ctx, p, offsets, "reset to earliest by operator", RESET)


@checkpoint_group.command("reset")
@click.argument("pillow")
@click.option("--topic", help="Only this topic's partitions.")
@click.pass_context
def reset_cmd(ctx: click.Context, pillow: str, topic: str | None) -> None:
    """Move checkpoints back to the earliest offset: everything in the log is re-read."""
    _move_all(ctx, pillow, topic, to_head=False)


@checkpoint_group.command("to-head")
@click.argument("pillow")
@click.option("--topic", help="Only this topic's partitions.")
@click.pass_context
def to_head_cmd(ctx: click.Context, pillow: str, topic: str | None) -> None:
    """Move checkpoints to the head: changes not yet read are skipped."""
    _move_all(ctx, pillow, topic, to_head=True)


@checkpoint_group.command("history")
@click.argument("pillow", required=False)
@click.option("--limit", type=LIMIT, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def history_cmd(ctx: click.Context, pillow: str | None, limit: int, as_json: bool) -> None:
    """Past checkpoint moves: who, when, old and new offset, what kind of move, why."""
    app = get_app(ctx, read_only=True)
    entries = app.checkpoints.history(pillow, limit=limit)
    if pillow is not None and not entries and pillow not in app.runnable_names:
        # A removed pillow keeps its history (shown above); a name never seen is a typo.
        known = ", ".join(app.runnable_names) or "none"
        raise UserError(f"unknown pillow {pillow!r} (known: {known}) and no history for it")
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in entries], indent=2))
        return
    if not entries:
        of = f" of {escape(pillow)}" if pillow is not None else ""
        click.echo(f"no checkpoint moves{of} recorded yet")
    for e in entries:
        old = "-" if e.old_offset is None else e.old_offset
        new = "-" if e.new_offset is None else e.new_offset
        click.echo(
            f"#{e.id}\t{when(e.changed_at)}\t{escape(e.pillow)}\t{escape(str(e.tp))}\t"
            f"{old} -> {new}\t{escape(e.changed_by)}\t{escape(e.kind)}\t{human(e.reason)}"
        )


@checkpoint_group.command("undo")
@click.argument("entry_id", type=ENTRY_ID)
@click.pass_context
def undo_cmd(ctx: click.Context, entry_id: int) -> None:
    """Put back the offset a history entry replaced."""
    with user_errors(LookupError):
        entry = get_app(ctx).checkpoints.undo(entry_id)
    new = "-" if entry.new_offset is None else entry.new_offset
    click.echo(f"#{entry.id} {entry.pillow} {entry.tp}: {entry.old_offset} -> {new}")


# -- import-pillowtop: take over where a CommCare HQ pillow stopped ------------------------

PILLOWTOP_CHECKPOINT_TABLE = "pillowtop_kafkacheckpoint"
"""HQ's Kafka checkpoint table: one row per (checkpoint_id, topic, partition) holding the next
offset to read, the same meaning as ours, so offsets are copied unchanged."""


def _one_line(exc: BaseException) -> str:
    """The first line of a database error, without SQLAlchemy's background link."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_pillowtop_checkpoints(
    url: str, checkpoint_id: str, table: str = PILLOWTOP_CHECKPOINT_TABLE
) -> dict[TopicPartition, int]:
    """HQ's checkpoint rows for ``checkpoint_id``, read with SQLAlchemy Core (no HQ code).

    Raises `UserError` for a URL that cannot be used or reached and a missing table."""
    import sqlalchemy as sa

    from changefeed.identifiers import sql_identifier

    with user_errors():
        sql_identifier(table, "table name")
    try:
        parsed = sa.engine.make_url(url)
        shown = parsed.render_as_string(hide_password=True)
        if parsed.get_backend_name() == "sqlite":
            path = parsed.database or ""
            if path in ("", ":memory:") or not Path(path).is_file():
                raise UserError(f"cannot read pillowtop checkpoints: no SQLite file at {shown}")
            args: dict[str, Any] = {}
        else:
            args = {"connect_timeout": 10} if parsed.get_backend_name() == "postgresql" else {}
        engine = sa.create_engine(parsed, connect_args=args)
    except UserError:
        raise
    except (sa.exc.ArgumentError, ImportError, ValueError) as exc:
        raise UserError(f"bad database URL for --from: {_one_line(exc)}") from None
    t = sa.table(
        table,
        sa.column("checkpoint_id"),
        sa.column("topic"),
        sa.column("partition"),
        sa.column("offset"),
    )
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(table):
                raise UserError(f"no table {table!r} in {shown}: is this CommCare HQ's database?")
            rows = conn.execute(
                sa.select(t.c.topic, t.c.partition, t.c.offset).where(
                    t.c.checkpoint_id == checkpoint_id
                )
            ).all()
    except sa.exc.SQLAlchemyError as exc:
        raise UserError(
            f"cannot read pillowtop checkpoints from {shown}: {_one_line(exc)}"
        ) from None
    finally:
        engine.dispose()
    return {TopicPartition(str(topic), int(part)): int(off) for topic, part, off in rows}


def _describe(tps: Iterable[TopicPartition]) -> str:
    return ", ".join(str(tp) for tp in sorted(tps))


@checkpoint_group.command("import-pillowtop")
@click.option(
    "--from", "source_url", required=True, metavar="URL", help="SQLAlchemy URL of HQ's database."
)
@click.option("--pillow", "pillow", required=True, help="The changefeed pillow taking over.")
@click.option(
    "--checkpoint-id", help="HQ's checkpoint id (default: the pillow's name).", metavar="ID"
)
@click.option(
    "--table", default=PILLOWTOP_CHECKPOINT_TABLE, show_default=True, help="HQ's checkpoint table."
)
@click.option("--dry-run", is_flag=True, help="Show the offsets, change nothing.")
@click.pass_context
def import_pillowtop_cmd(
    ctx: click.Context,
    source_url: str,
    pillow: str,
    checkpoint_id: str | None,
    table: str,
    dry_run: bool,
) -> None:
    """Set a pillow's checkpoints to where a CommCare HQ pillow stopped.

    Reads HQ's Kafka checkpoint rows ('pillowtop_kafkacheckpoint') and sets every
    partition the pillow reads to HQ's offset, recorded in the history (undo restores the
    old ones). Refuses when HQ's rows and the pillow's topics and partitions differ.
    """
    p = _pillow(ctx, pillow)
    cid = checkpoint_id or p.name
    offsets = read_pillowtop_checkpoints(source_url, cid, table)
    if not offsets:
        raise UserError(f"no pillowtop checkpoint rows for checkpoint id {cid!r} in {table}")
    feed = p.change_feed
    reads = set(feed.topic_partitions())
    unknown, missing = set(offsets) - reads, reads - set(offsets)
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"HQ has {_describe(unknown)} which the pillow does not read")
        if missing:
            parts.append(f"HQ has no checkpoint for {_describe(missing)}")
        raise UserError(f"checkpoint {cid!r} does not match pillow {p.name!r}: {'; '.join(parts)}")
    heads = feed.latest_offsets()
    ahead = {tp: off for tp, off in offsets.items() if off > heads.get(tp, 0)}
    if ahead:
        where = ", ".join(
            f"{tp}={off} (head {heads.get(tp, 0)})" for tp, off in sorted(ahead.items())
        )
        raise UserError(f"checkpoint {cid!r} is past the head of the log ({where}): wrong log?")
    earliest = feed.earliest_offsets()
    for tp, off in sorted(offsets.items()):
        if off < earliest.get(tp, 0):
            click.echo(
                f"warning: {tp} offset {off} is before the earliest kept ({earliest[tp]})",
                err=True,
            )
    if dry_run:
        for tp, off in sorted(offsets.items()):
            click.echo(f"{tp}: would set {off}")
        return
    reason = f"imported from pillowtop checkpoint {cid!r}"
    entries = get_app(ctx).checkpoints.set(p.name, offsets, reason=reason, kind="import")
    for entry in entries:
        old = "-" if entry.old_offset is None else entry.old_offset
        click.echo(f"#{entry.id} {entry.tp}: {old} -> {entry.new_offset}")
    click.echo(_undo_hint([entry.id for entry in entries]), err=True)
