"""``changefeed tail TOPIC``: print stubs as they are published (JSON lines)."""

from __future__ import annotations

import click
import orjson

from changefeed.change import TopicPartition
from changefeed.cli.common import UserError, cli, get_app, user_errors
from changefeed.identifiers import topic_name


@cli.command("tail")
@click.argument("topic")
@click.option("--from-beginning", is_flag=True, help="Start at the earliest offset.")
@click.option(
    "-n",
    "--last",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Start this many changes before the head of each partition.",
)
@click.option("--follow/--no-follow", "-f", default=False, help="Keep printing new changes.")
@click.option("--limit", type=click.IntRange(min=1), help="Stop after this many changes.")
@click.pass_context
def tail_cmd(
    ctx: click.Context,
    topic: str,
    from_beginning: bool,
    last: int,
    follow: bool,
    limit: int | None,
) -> None:
    """Print a topic's changes as JSON lines: position, then the stub."""
    with user_errors():
        topic_name(topic)
    app = get_app(ctx)
    feed = app.change_feed([topic], client_id="changefeed-tail", idle_timeout=0.5)
    partitions = feed.topic_partitions()
    if not partitions:
        raise UserError(f"topic {topic!r} does not exist")
    earliest = feed.earliest_offsets()
    heads = feed.latest_offsets()
    since: dict[TopicPartition, int] = {}
    for tp in partitions:
        start = (
            earliest.get(tp, 0)
            if from_beginning
            else max(earliest.get(tp, 0), heads.get(tp, 0) - last)
        )
        since[tp] = start
    printed = 0
    try:
        for change in feed.iter_changes(since, forever=follow):
            if change is None:
                continue
            stub = change.metadata.to_dict() if change.metadata else {"invalid": change.error}
            line = {
                "topic": change.topic,
                "partition": change.partition,
                "offset": change.offset,
                "stub": stub,
            }
            click.echo(orjson.dumps(line).decode())
            printed += 1
            if limit is not None and printed >= limit:
                break
    finally:
        feed.close()
