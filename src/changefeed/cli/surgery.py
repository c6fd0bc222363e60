"""``changefeed checkpoint validate|copy|merge|dump-remaining``: checkpoint surgery for deploys.

Every move goes through `CheckpointStore.set`, so it is in the history (kinds ``copy`` and
``merge``) and ``checkpoint undo`` puts back what it replaced. A pillow running while its
checkpoint is moved notices at its next commit and reads on from the new value.
"""

from __future__ import annotations

from collections.abc import Sequence

import click
import orjson

from changefeed.backends import FeedOptions
from changefeed.change import TopicPartition
from changefeed.checkpoints import COPY, MERGE
from changefeed.cli.checkpoint import checkpoint_group
from changefeed.cli.common import UserError, get_app, user_errors
from changefeed.cli.output import plural
from changefeed.pillow import Pillow


def _pillow(ctx: click.Context, name: str) -> Pillow:
    with user_errors():
        return get_app(ctx).get_pillow(name)


def _describe(tps: set[TopicPartition]) -> str:
    return ", ".join(str(tp) for tp in sorted(tps))


def _echo_entries(
    ctx: click.Context, dst: str, offsets: dict[TopicPartition, int], reason: str, kind: str
) -> None:
    for entry in get_app(ctx).checkpoints.set(dst, offsets, reason=reason, kind=kind):
        old = "-" if entry.old_offset is None else entry.old_offset
        click.echo(f"#{entry.id} {entry.tp}: {old} -> {entry.new_offset}")
    click.echo("undo with: changefeed checkpoint undo ID (one per partition)", err=True)


@checkpoint_group.command("validate")
@click.argument("pillows", nargs=-1, metavar="[PILLOW]...")
@click.pass_context
def validate_cmd(ctx: click.Context, pillows: tuple[str, ...]) -> None:
    """Exit 1 naming every pillow whose checkpoint is before the earliest offset the log
    still holds (retention removed changes it has not read) or beyond the head (wrong log
    or a topic recreated); 0 when all are readable. Run it before a deploy."""
    app = get_app(ctx, read_only=True)
    names = pillows or tuple(app.pillow_names)
    bad: list[str] = []
    for name in names:
        p = _pillow(ctx, name)
        saved = app.checkpoints.get(p.name)
        feed = p.change_feed
        earliest, heads = feed.earliest_offsets(), feed.latest_offsets()
        problems = []
        for tp, off in sorted(saved.items()):
            if tp not in heads:
                problems.append(f"{tp}: checkpoint {off} for a partition the log does not have")
            elif off < earliest.get(tp, 0):
                problems.append(f"{tp}: checkpoint {off} before earliest {earliest[tp]}")
            elif off > heads[tp]:
                problems.append(f"{tp}: checkpoint {off} beyond head {heads[tp]}")
        for problem in problems:
            click.echo(f"{p.name}: {problem}")
        if problems:
            bad.append(p.name)
        else:
            click.echo(f"{p.name}: ok")
    if bad:
        click.echo(f"invalid checkpoints: {', '.join(bad)}", err=True)
        ctx.exit(1)


def _readable(p: Pillow, offsets: dict[TopicPartition, int], what: str) -> None:
    """Refuse offsets for partitions the pillow does not read."""
    extra = set(offsets) - set(p.change_feed.topic_partitions())
    if extra:
        raise UserError(f"pillow {p.name!r} does not read {_describe(extra)} ({what})")


@checkpoint_group.command("copy")
@click.argument("src")
@click.argument("dst")
@click.pass_context
def copy_cmd(ctx: click.Context, src: str, dst: str) -> None:
    """Give pillow DST the checkpoints of SRC, for a renamed or split pillow."""
    if src == dst:
        raise UserError("source and destination are the same pillow")
    source, target = _pillow(ctx, src), _pillow(ctx, dst)
    offsets = get_app(ctx).checkpoints.get(source.name)
    if not offsets:
        raise UserError(f"pillow {src!r} has no checkpoints to copy")
    _readable(target, offsets, f"checkpoints of {src!r}")
    _echo_entries(ctx, target.name, offsets, f"copied from {source.name}", COPY)


def merged_offsets(
    checkpoints: Sequence[tuple[str, dict[TopicPartition, int]]],
) -> dict[TopicPartition, int]:
    """Per partition the minimum offset (nothing any source has not processed is skipped).
    Raises `UserError` when the sources do not checkpoint the same partitions."""
    first_name, first = checkpoints[0]
    for name, offsets in checkpoints[1:]:
        if set(offsets) != set(first):
            diff = set(offsets) ^ set(first)
            raise UserError(
                f"pillows {first_name!r} and {name!r} have checkpoints for different partitions "
                f"({_describe(diff)}): merge refuses"
            )
    return {tp: min(offsets[tp] for _, offsets in checkpoints) for tp in first}


@checkpoint_group.command("merge")
@click.argument("names", nargs=-1, required=True, metavar="SRC... DST")
@click.pass_context
def merge_cmd(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Set DST's checkpoints to the minimum offset per partition of the SRC pillows.

    For pillows merged into one: changes some sources processed are processed again, none
    is skipped. Refuses when the sources' partition sets differ."""
    if len(names) < 2:
        raise UserError("merge needs at least one SRC and a DST")
    *sources, dst = names
    app = get_app(ctx)
    target = _pillow(ctx, dst)
    found = []
    for name in sources:
        offsets = app.checkpoints.get(_pillow(ctx, name).name)
        if not offsets:
            raise UserError(f"pillow {name!r} has no checkpoints to merge")
        found.append((name, offsets))
    merged = merged_offsets(found)
    _readable(target, merged, "merged checkpoints")
    current = app.checkpoints.get(target.name)
    baseline = {tp: current.get(tp, max(offsets[tp] for _, offsets in found)) for tp in merged}
    again = sum(max(0, baseline[tp] - off) for tp, off in merged.items())
    _echo_entries(ctx, target.name, merged, f"merged from {', '.join(sources)}", MERGE)
    click.echo(f"{plural(again, 'change')} will be processed again by {target.name}")


@checkpoint_group.command("dump-remaining")
@click.argument("pillow")
@click.pass_context
def dump_remaining_cmd(ctx: click.Context, pillow: str) -> None:
    """Print the changes PILLOW has not processed yet (checkpoint to head) as JSON lines:
    position, then the stub."""
    app = get_app(ctx, read_only=True)
    p = _pillow(ctx, pillow)
    saved = app.checkpoints.get(p.name)
    probe = p.change_feed
    partitions = probe.topic_partitions()
    earliest, heads = probe.earliest_offsets(), probe.latest_offsets()
    since = {
        tp: max(saved.get(tp, 0), earliest.get(tp, 0))
        for tp in partitions
        if saved.get(tp, 0) < heads.get(tp, 0)
    }
    if not since:
        return
    feed = app.change_feed(sorted({tp.topic for tp in since}), FeedOptions("changefeed-dump"))
    try:
        for change in feed.iter_changes(since, forever=False):
            if change is None:
                continue
            tp = TopicPartition(change.topic, change.partition)
            if tp not in since or change.offset >= heads[tp]:
                continue
            stub = change.metadata.to_dict() if change.metadata else {"invalid": change.error}
            line = {
                "topic": change.topic,
                "partition": change.partition,
                "offset": change.offset,
                "stub": stub,
            }
            click.echo(orjson.dumps(line).decode())
    finally:
        feed.close()
