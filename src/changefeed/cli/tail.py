"""``changefeed tail TOPIC``: print stubs as they are published (JSON lines), with the
filters of ``changefeed changes`` (a document, a type, a domain, a time range)."""

from __future__ import annotations

import click
import orjson

from changefeed.change import TopicPartition
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
    default=10,
    show_default=True,
    help="Start this many changes before the head of each partition.",
)
@click.option("--follow/--no-follow", "-f", default=False, help="Keep printing new changes.")
@click.option("--limit", type=LIMIT, help="Stop after this many changes.")
@filter_options
@click.pass_context
def tail_cmd(
    ctx: click.Context,
    topic: str,
    from_beginning: bool,
    last: int,
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
    ``--since`` starts at that time (looked up, not scanned for) instead of ``-n``."""
    with user_errors():
        topic_name(topic)
    f = make_filter(doc_ids, ids_file, doc_type, subtype, domain, since, until)
    app = get_app(ctx)
    feed = app.change_feed([topic], client_id="changefeed-tail", idle_timeout=0.5)
    partitions = feed.topic_partitions()
    if not partitions:
        feed.close()
        raise UserError(f"topic {topic!r} does not exist")
    partitions = key_partitions(app.backend, f.doc_ids, partitions)
    earliest = feed.earliest_offsets()
    heads = feed.latest_offsets()
    at_time = feed.offsets_for_time(f.since) if f.since is not None else None
    starts: dict[TopicPartition, int] = {}
    for tp in partitions:
        if at_time is not None:
            start = max(earliest.get(tp, 0), at_time.get(tp, 0))
        elif from_beginning:
            start = earliest.get(tp, 0)
        else:
            start = max(earliest.get(tp, 0), heads.get(tp, 0) - last)
        starts[tp] = start
    printed = 0
    try:
        for change in feed.iter_changes(starts, forever=follow):
            if change is None or not f.matches(change):
                continue
            click.echo(orjson.dumps(change_line(change)).decode())
            printed += 1
            if limit is not None and printed >= limit:
                break
    finally:
        feed.close()
