"""``changefeed changes TOPIC``: which changes of a document are in the log, where and when.

Time bounds become offsets through the feed's time lookup (`ChangeFeed.offsets_for_time`:
Kafka's time index, a binary search of the embedded log's batches), so ``--since 1h`` on a
month of log reads an hour of it. With ``--doc-id`` only the partitions the ids may live in
are read (`key_partitions`), as the log places keys (`Backend.partition_for`); a log that
cannot say (a Kafka URL with another ``partitioner``) makes every partition read.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson

from changefeed.backends.base import Backend, ChangeFeed, FeedOptions
from changefeed.change import Change, TopicPartition
from changefeed.cli.common import UserError, cli, get_app, user_errors
from changefeed.cli.output import plural
from changefeed.cli.params import LIMIT
from changefeed.identifiers import topic_name

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now: float | None = None) -> float:
    """Unix seconds from ISO 8601 (no zone: UTC) or a time ago (``30m``, ``1h``, ``2d``)."""
    now = time.time() if now is None else now
    match = _RELATIVE.match(text.strip())
    if match:
        return now - float(match.group(1)) * _UNIT[match.group(2)]
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UserError(
            f"bad time {text!r}: use ISO 8601 (2026-01-31T12:00:00Z) or an age (30m, 1h, 2d)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def read_ids(doc_ids: Iterable[str], ids_file: str | None) -> set[str]:
    """Document ids from ``--doc-id`` and a file of ids, one per line."""
    ids = {i for i in doc_ids if i}
    if ids_file is not None:
        try:
            text = Path(ids_file).read_text()
        except OSError as exc:
            raise UserError(f"cannot read ids file {ids_file!r}: {exc.strerror}") from None
        ids.update(line.strip() for line in text.splitlines() if line.strip())
        if not ids:
            raise UserError(f"ids file {ids_file!r} holds no document ids")
    return ids


@dataclass
class ChangeFilter:
    """What ``changes`` and ``tail`` keep: every given condition must hold."""

    doc_ids: set[str] = field(default_factory=set)
    doc_type: str | None = None
    subtype: str | None = None
    domain: str | None = None
    since: float | None = None
    until: float | None = None

    def matches(self, change: Change) -> bool:
        meta = change.metadata
        if meta is None:  # an invalid stub: kept only when its key is asked for
            return not (self.doc_type or self.subtype or self.domain) and (
                not self.doc_ids or change.id in self.doc_ids
            )
        if self.doc_ids and meta.document_id not in self.doc_ids:
            return False
        if self.doc_type is not None and meta.document_type != self.doc_type:
            return False
        if self.subtype is not None and meta.document_subtype != self.subtype:
            return False
        if self.domain is not None and meta.domain != self.domain:
            return False
        ts = meta.publish_timestamp
        if ts is not None:
            if self.since is not None and ts < self.since:
                return False
            if self.until is not None and ts >= self.until:
                return False
        return True


def key_partitions(
    backend: Backend, doc_ids: set[str], partitions: list[TopicPartition]
) -> list[TopicPartition]:
    """The partitions ``doc_ids`` may have been published to, or all when that cannot be
    known. A topic grows (``topics add-partitions``) and a key then moves to another
    partition, while its older changes stay where they were; neither log records when it
    had how many partitions, so for every count from 1 to today's the partition the key
    had under it is read: every partition the key has lived in, and usually far fewer than
    all."""
    if not doc_ids:
        return partitions
    counts: dict[str, int] = {}
    for tp in partitions:
        counts[tp.topic] = max(counts.get(tp.topic, 0), tp.partition + 1)
    wanted: set[TopicPartition] = set()
    for topic, n in counts.items():
        for doc in doc_ids:
            for count in range(1, n + 1):
                partition = backend.partition_for(doc, count)
                if partition is None:
                    return partitions
                wanted.add(TopicPartition(topic, partition))
            if len(wanted) >= len(partitions):
                return partitions
    return [tp for tp in partitions if tp in wanted]


def filter_options(func: Any) -> Any:
    """The options ``changes`` and ``tail`` share."""
    for option in reversed(
        [
            click.option("--doc-id", "doc_ids", multiple=True, help="A document id (repeatable)."),
            click.option("--ids-file", type=click.Path(), help="Document ids, one per line."),
            click.option("--type", "doc_type", help="Only this document type."),
            click.option("--subtype", help="Only this document subtype."),
            click.option("--domain", help="Only this domain."),
            click.option("--since", help="Published at or after: ISO 8601 or an age (1h, 30m)."),
            click.option("--until", help="Published before: ISO 8601 or an age."),
        ]
    ):
        func = option(func)
    return func


def make_filter(
    doc_ids: tuple[str, ...],
    ids_file: str | None,
    doc_type: str | None,
    subtype: str | None,
    domain: str | None,
    since: str | None,
    until: str | None,
) -> ChangeFilter:
    f = ChangeFilter(
        read_ids(doc_ids, ids_file),
        doc_type,
        subtype,
        domain,
        None if since is None else parse_time(since),
        None if until is None else parse_time(until),
    )
    if f.since is not None and f.until is not None and f.until <= f.since:
        raise UserError("--until must be later than --since")
    return f


def bounds(
    feed: ChangeFeed, partitions: list[TopicPartition], f: ChangeFilter
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """(start, end) offsets per partition: from the time lookup, else earliest and head."""
    earliest, heads = feed.earliest_offsets(), feed.latest_offsets()
    start = feed.offsets_for_time(f.since) if f.since is not None else earliest
    end = feed.offsets_for_time(f.until) if f.until is not None else heads
    starts = {tp: max(start.get(tp, 0), earliest.get(tp, 0)) for tp in partitions}
    ends = {tp: min(end.get(tp, 0), heads.get(tp, 0)) for tp in partitions}
    return starts, ends


def read_range(
    feed: ChangeFeed, starts: dict[TopicPartition, int], ends: dict[TopicPartition, int]
) -> Iterator[Change]:
    """Changes from ``starts`` up to (not including) ``ends``, stopping once all are done."""
    since = {tp: off for tp, off in starts.items() if off < ends[tp]}
    left = set(since)
    if not left:
        return
    for changes in feed.iter_change_batches(since, forever=False):
        if changes is None:
            continue
        for change in changes:
            tp = TopicPartition(change.topic, change.partition)
            if tp not in left:
                continue
            if change.offset >= ends[tp]:
                left.discard(tp)
                continue
            yield change
        for tp, off in changes.next_offsets.items():
            if tp in left and off >= ends[tp]:
                left.discard(tp)
        if not left:
            return


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def change_line(change: Change) -> dict[str, Any]:
    """A change as one JSON object: position, publish time, the stub."""
    meta = change.metadata
    return {
        "topic": change.topic,
        "partition": change.partition,
        "offset": change.offset,
        "published": _iso(meta.publish_timestamp) if meta else None,
        "stub": meta.to_dict() if meta else {"invalid": change.error, "key": change.id},
    }


@cli.command("changes")
@click.argument("topic")
@filter_options
@click.option("--limit", type=LIMIT, help="Stop after this many changes.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
@click.pass_context
def changes_cmd(
    ctx: click.Context,
    topic: str,
    doc_ids: tuple[str, ...],
    ids_file: str | None,
    doc_type: str | None,
    subtype: str | None,
    domain: str | None,
    since: str | None,
    until: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """Find changes in TOPIC, with partition, offset and publish time.

    For example every change of one document ('--doc-id'), or what was published in a
    time range; time bounds are looked up, not scanned for."""
    with user_errors():
        topic_name(topic)
    f = make_filter(doc_ids, ids_file, doc_type, subtype, domain, since, until)
    app = get_app(ctx, read_only=True)
    feed = app.change_feed([topic], FeedOptions("changefeed-changes", idle_timeout=0.5))
    try:
        partitions = feed.topic_partitions()
        if not partitions:
            raise UserError(f"topic {topic!r} does not exist")
        partitions = key_partitions(app.backend, f.doc_ids, partitions)
        starts, ends = bounds(feed, partitions, f)
        found = 0
        for change in read_range(feed, starts, ends):
            if not f.matches(change):
                continue
            line = change_line(change)
            if as_json:
                click.echo(orjson.dumps(line).decode())
            else:
                stub = line["stub"]
                kind = "/".join(
                    x for x in (stub.get("document_type"), stub.get("document_subtype")) if x
                )
                deleted = " deleted" if stub.get("is_deletion") else ""
                click.echo(
                    f"{change.topic}[{change.partition}]@{change.offset}\t{line['published']}"
                    f"\t{stub.get('document_id', change.id)}\t{kind or '-'}"
                    f"\t{stub.get('domain') or '-'}{deleted}"
                )
            found += 1
            if limit is not None and found >= limit:
                break
    finally:
        feed.close()
    if not as_json:
        click.echo(plural(found, "change"), err=True)
