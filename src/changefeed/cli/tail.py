"""``changefeed tail TOPIC``: print stubs as they are published (JSON lines), with the
filters of ``changefeed changes`` (a document, a type, a domain, a time range)."""

from __future__ import annotations

from collections.abc import Callable

import click
import orjson

from changefeed.backends import ChangeFeed, FeedOptions
from changefeed.change import Change, TopicPartition
from changefeed.cli.changes import change_line, filter_options, key_partitions, make_filter
from changefeed.cli.common import UserError, cli, get_app, user_errors
from changefeed.cli.params import COUNT, LIMIT
from changefeed.identifiers import topic_name


@cli.command("tail")
@click.argument("topic")
@click.option("--from-beginning", is_flag=True, help="Start at the earliest offset.")
@click.option(
    "-n",
    "--last",
    type=COUNT,
    help="How many changes in all, whatever the partitions: the last N before the head "
    "[default: 10], or the first N with --from-beginning or --since [default: all].",
)
@click.option("--follow/--no-follow", "-f", default=False, help="Keep printing new changes.")
@click.option("--limit", type=LIMIT, help="Stop after this many changes.")
@filter_options
@click.pass_context
def tail_cmd(
    ctx: click.Context,
    topic: str,
    from_beginning: bool,
    last: int | None,
    follow: bool,
    limit: int | None,
    doc_ids: tuple[str, ...],
    ids_file: str | None,
    doc_type: str | None,
    subtype: str | None,
    domain: str | None,
    since: str | None,
    until: str | None,
) -> None:
    """Print a topic's changes as JSON lines: position, publish time, then the stub.
    '--since' starts at that time (looked up, not scanned for) instead of '-n'."""
    with user_errors():
        topic_name(topic)
    f = make_filter(doc_ids, ids_file, doc_type, subtype, domain, since, until)
    app = get_app(ctx, read_only=True)
    feed = app.change_feed([topic], FeedOptions("changefeed-tail", idle_timeout=0.5))
    partitions = feed.topic_partitions()
    if not partitions:
        feed.close()
        raise UserError(f"topic {topic!r} does not exist")
    partitions = key_partitions(app.backend, f.doc_ids, partitions)
    earliest = feed.earliest_offsets()
    heads = feed.latest_offsets()
    at_time = feed.offsets_for_time(f.since) if f.since is not None else None
    from_start = from_beginning or at_time is not None
    if last is None and not from_start:
        last = 10
    starts: dict[TopicPartition, int] = {}
    for tp in partitions:
        if at_time is not None:
            start = max(earliest.get(tp, 0), at_time.get(tp, 0))
        elif from_beginning or last is None:
            start = earliest.get(tp, 0)
        else:
            start = max(earliest.get(tp, 0), heads.get(tp, 0) - last)
        starts[tp] = start
    printed = 0
    try:
        if last is not None:
            # Each partition holds up to N of them: read them all, print N in publish order.
            window, read_to = _window(feed, starts, f.matches, last, from_start)
            for shown in window[:limit]:
                click.echo(orjson.dumps(change_line(shown)).decode())
                # The first N: follow on after the last one printed, skipping nothing.
                starts[shown.topic_partition] = shown.offset + 1
            printed = len(window[:limit])
            if not follow or (limit is not None and printed >= limit):
                return
            if not from_start:  # the last N: follow on from where the window was read to
                starts.update(read_to)
        for change in feed.iter_changes(starts, forever=follow):
            if change is None or not f.matches(change):
                continue
            click.echo(orjson.dumps(change_line(change)).decode())
            printed += 1
            if limit is not None and printed >= limit:
                break
    finally:
        feed.close()


def _window(
    feed: ChangeFeed,
    starts: dict[TopicPartition, int],
    matches: Callable[[Change], bool],
    count: int,
    first: bool,
) -> tuple[list[Change], dict[TopicPartition, int]]:
    """The first (or last) ``count`` matching changes of all partitions together, in
    publish order; reading stops once every partition gave ``count`` (for the first). Also
    the offset after the last change read in each partition."""
    per_partition: dict[TopicPartition, list[Change]] = {tp: [] for tp in starts}
    read_to: dict[TopicPartition, int] = {}
    for change in feed.iter_changes(starts, forever=False):
        if change is None:
            continue
        read_to[change.topic_partition] = change.offset + 1
        if not matches(change):
            continue
        held = per_partition.setdefault(change.topic_partition, [])
        if first and len(held) >= count:
            if all(len(c) >= count for c in per_partition.values()):
                break
            continue
        held.append(change)
        if not first and len(held) > count:
            del held[0]
    ordered = sorted((c for held in per_partition.values() for c in held), key=_published)
    return (ordered[:count] if first else ordered[-count:] if count else []), read_to


def _published(change: Change) -> tuple[float, int, int]:
    meta = change.metadata
    stamp = meta.publish_timestamp if meta is not None else None
    return (stamp or 0.0, change.partition, change.offset)
