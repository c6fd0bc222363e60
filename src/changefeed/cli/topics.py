"""``changefeed topics create|list|describe|add-partitions``: topic admin on any log.

Works through the `TopicAdmin` and `ChangeFeed` interfaces, so the same commands serve the
embedded log and Kafka; topic settings (``--config``) need a backend that has them.
Growing a topic (``add-partitions``, or ``create`` of an existing topic with more partitions)
also writes checkpoints at offset 0 for the new partitions of every pillow that reads it, so
changes published there before a pillow restarts are never skipped.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from changefeed.app import App
from changefeed.backends import TopicAdmin, UnknownTopicError
from changefeed.change import TopicPartition
from changefeed.cli.common import UserError, cli, get_app, user_errors
from changefeed.identifiers import topic_name


@cli.group("topics")
def topics_group() -> None:
    """Create, list, describe and grow the log's topics."""


def _admin(app: App) -> TopicAdmin:
    return app.backend.admin()


def _partitions(admin: TopicAdmin, name: str) -> int:
    for info in admin.list_topics():
        if info.name == name:
            return info.partitions
    raise UserError(f"unknown topic {name!r} (see: changefeed topics list)")


def _parse_configs(pairs: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--config takes KEY=VALUE, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


@topics_group.command("create")
@click.argument("names", nargs=-1, required=True, metavar="TOPIC...")
@click.option("--partitions", "-p", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--replication-factor", type=click.IntRange(min=1), help="Kafka only.")
@click.option(
    "--config",
    "-c",
    "configs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Topic setting, e.g. retention.ms=604800000 (Kafka only; repeatable).",
)
@click.pass_context
def create_cmd(
    ctx: click.Context,
    names: tuple[str, ...],
    partitions: int,
    replication_factor: int | None,
    configs: tuple[str, ...],
) -> None:
    """Create topics (an existing topic with fewer partitions is grown, and pillows reading
    it start the new partitions at offset 0, as with add-partitions)."""
    with user_errors():
        for name in names:
            topic_name(name)
    settings = _parse_configs(configs)
    app = get_app(ctx)
    admin = _admin(app)
    extra: dict[str, Any] = {}
    if settings:
        extra["config"] = settings
    if replication_factor is not None:
        extra["replication_factor"] = replication_factor
    accepted = inspect.signature(admin.create_topic).parameters
    unsupported = [k for k in extra if k not in accepted]
    if unsupported:
        options = ", ".join(f"--{k.replace('_', '-')}" for k in unsupported)
        raise UserError(f"{options}: not supported by this log ({type(admin).__name__})")
    for name in names:
        with user_errors(ValueError):
            created = admin.create_topic(name, partitions, **extra)
        click.echo(created.describe())
        if created.grown and created.previous is not None:
            _seed_new_partitions(app, name, created.previous, created.partitions)


@topics_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def list_cmd(ctx: click.Context, as_json: bool) -> None:
    """Topics with their partition counts."""
    infos = _admin(get_app(ctx)).list_topics()
    if as_json:
        click.echo(json.dumps([{"name": i.name, "partitions": i.partitions} for i in infos]))
        return
    if not infos:
        click.echo("no topics")
    for info in infos:
        click.echo(f"{info.name}\t{info.partitions}")


@topics_group.command("describe")
@click.argument("name", metavar="TOPIC")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def describe_cmd(ctx: click.Context, name: str, as_json: bool) -> None:
    """Per partition: earliest and latest offset; and the topic's settings."""
    with user_errors():
        topic_name(name)
    app = get_app(ctx)
    admin = _admin(app)
    count = _partitions(admin, name)
    feed = app.backend.change_feed([name])
    try:
        earliest = feed.earliest_offsets()
        latest = feed.latest_offsets()
    finally:
        feed.close()
    settings = admin.describe_topic(name).config
    rows = []
    for part in range(count):
        tp = TopicPartition(name, part)
        first, head = earliest.get(tp, 0), latest.get(tp, 0)
        rows.append({"partition": part, "earliest": first, "latest": head, "records": head - first})
    if as_json:
        out = {"name": name, "partitions": rows, "config": settings}
        click.echo(json.dumps(out, indent=2))
        return
    table = Table("partition", "earliest", "latest", "records", title=f"{name}")
    for row in rows:
        table.add_row(*(str(row[k]) for k in ("partition", "earliest", "latest", "records")))
    console = Console()
    console.print(table)
    for key in sorted(settings):
        console.print(f"{key} = {settings[key]}")


def _seed_new_partitions(app: App, name: str, previous: int, total: int) -> None:
    """After a topic grew from ``previous`` to ``total`` partitions (``add-partitions``, or
    ``create`` of an existing topic with more): offset-0 checkpoints for the new partitions
    of every pillow reading it, and say which."""
    new = [TopicPartition(name, p) for p in range(previous, total)]
    seeded = _seed_checkpoints(app, name, new)
    if seeded:
        click.echo(f"checkpoints at offset 0 for the new partitions of: {', '.join(seeded)}")


def _seed_checkpoints(app: App, name: str, new: list[TopicPartition]) -> list[str]:
    """Offset-0 checkpoints for the new partitions, for every pillow reading the topic."""
    seeded = []
    for pillow_name in app.pillow_names:
        with user_errors():
            pillow = app.get_pillow(pillow_name)
        try:
            if name not in pillow.change_feed.topics:
                continue
        finally:
            pillow.change_feed.close()
        saved = app.checkpoints.get(pillow_name)
        missing = {tp: 0 for tp in new if tp not in saved}
        if missing:
            app.checkpoints.set(
                pillow_name,
                missing,
                reason=f"partitions added to {name}: start new partitions at offset 0",
            )
            seeded.append(pillow_name)
    return seeded


@topics_group.command("add-partitions")
@click.argument("name", metavar="TOPIC")
@click.argument("total", type=click.IntRange(min=1), metavar="TOTAL")
@click.pass_context
def add_partitions_cmd(ctx: click.Context, name: str, total: int) -> None:
    """Grow TOPIC to TOTAL partitions; pillows reading it start them at offset 0."""
    with user_errors():
        topic_name(name)
    app = get_app(ctx)
    admin = _admin(app)
    current = _partitions(admin, name)
    if total < current:
        raise UserError(f"topic {name!r} has {current} partitions; partitions cannot be removed")
    if total == current:
        click.echo(f"{name} already has {total} partitions")
        return
    with user_errors(ValueError, UnknownTopicError):
        admin.add_partitions(name, total)
    click.echo(f"{name}: {current} -> {total} partitions")
    _seed_new_partitions(app, name, current, total)
