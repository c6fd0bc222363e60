"""Where a pillow stands: per partition checkpoint, head, lag and checkpoint age.

Shared by ``changefeed status``, the metrics exporter and the dashboard, so all three agree.
Other runnables (bridges, relays) report through their `Health`; replication slots through a
probe the caller supplies, so this module knows no particular source.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from changefeed.app import App
from changefeed.checkpoints import RETENTION, partition_lag
from changefeed.identifiers import redact_secrets
from changefeed.pillow import Pillow
from changefeed.runner import Runnable
from changefeed.stores.base import UnknownDocumentStoreError


def redacted(value: Any, redact: Callable[[str], str] = redact_secrets) -> Any:
    """``value`` (a status row, an error entry: dicts, lists, strings) with every string
    passed through ``redact``, so a URL's password never reaches a status page, JSON
    output or the dashboard wherever in the row it is quoted. Everything else is kept
    exactly (keys, numbers, strings without credentials), so machine consumers see the
    same JSON."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {key: redacted(item, redact) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redacted(item, redact) for item in value]
    return value


SlotProbe = Callable[[], Mapping[str, Any]]
"""Reads one replication slot's state (``exists``, ``lag_bytes``, ``retained_bytes``,
``active``, ...); raises when the database cannot be reached."""


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    topic: str
    partition: int
    checkpoint: int | None
    head: int
    lag: int
    checkpoint_age: float | None
    """Seconds since the checkpoint was last written (None: never)."""
    beyond_head: bool = False
    """The checkpoint is past the head: the pillow will skip whatever is published up to it,
    and the lag (0) hides that, so it is flagged on its own."""


@dataclass(slots=True)
class PillowStatus:
    pillow: str
    partitions: list[PartitionStatus] = field(default_factory=list)
    errors_pending: int = 0
    errors_parked: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["lag"] = self.lag
        out["notes"] = redacted(out["notes"])
        return out


def pillow_status(app: App, pillow: Pillow, now: float | None = None) -> PillowStatus:
    now = time.time() if now is None else now
    heads = pillow.change_feed.latest_offsets()
    saved = app.checkpoints.get_detailed(pillow.name)
    status = PillowStatus(pillow.name)
    for tp in sorted(heads):
        head = heads[tp]
        cp = saved.get(tp)
        offset = cp.offset if cp else None
        beyond = offset is not None and offset > head
        if beyond:
            status.notes.append(
                f"{tp}: checkpoint {offset} is beyond the head {head}; changes published up to "
                "it will be skipped (wrong log, or set with --force?)"
            )
        status.partitions.append(
            PartitionStatus(
                tp.topic,
                tp.partition,
                offset,
                head,
                partition_lag(head, offset),
                None if cp is None else max(0.0, now - cp.updated_at),
                beyond,
            )
        )
    counts = app.error_queue.counts(pillow.name)
    status.errors_pending = counts.get("pending", 0)
    status.errors_parked = counts.get("parked", 0)
    for message, n in app.error_queue.messages(pillow.name, UnknownDocumentStoreError).items():
        status.notes.append(
            f"{n} {'change waits' if n == 1 else 'changes wait'} in the error queue: {message}; "
            f"once it is registered: changefeed errors retry --pillow {pillow.name}"
        )
    for tp, (was, now_at) in app.checkpoints.rewinds(pillow.name).items():
        status.notes.append(f"{tp}: REWIND: checkpoint {now_at} is behind {was} set in the history")
    for entry in app.checkpoints.history(pillow.name, limit=20):
        if entry.kind == RETENTION:
            status.notes.append(
                f"{entry.tp}: {entry.reason} at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(entry.changed_at))}Z"
            )
    return status


def orphaned_errors(app: App) -> dict[str, int]:
    """{name: entries} of error-queue entries whose pillow or runnable is not in ``app``: the
    retry runner visits registered runnables only, so these stay pending forever unless an
    operator removes them (``errors purge --orphaned``)."""
    known = set(app.runnable_names)
    return {name: n for name, n in app.error_queue.pillows().items() if name not in known}


def replication_slot_report(
    slot: str, probe: SlotProbe, database_url: str | None = None
) -> dict[str, Any]:
    """A replication slot's state as ``probe`` reads it, with its database (``database``,
    credentials redacted); an unreachable database is reported, not raised, so one bad slot
    does not hide the pillows' status."""
    where = {} if database_url is None else {"database": database_url}
    try:
        report = {"replication_slot": slot, **where, **probe()}
    except Exception as exc:  # noqa: BLE001 - shown to the operator instead
        report = {
            "replication_slot": slot,
            **where,
            "exists": None,
            "error": f"{type(exc).__name__}: {exc}",
        }
    return redacted(report)


def runnable_status(runnable: Runnable) -> dict[str, Any]:
    """A runnable that is not a pillow (a bridge, a relay), as its `Health` reports it.

    Read in the asking process, so liveness (``state``) says what this instance knows; the
    durable parts (a bridge's checkpoint, pending work) are what the runnable exposes in
    ``health().detail``. A runnable that cannot report is shown with its error."""
    try:
        health = runnable.health().to_dict()
    except Exception as exc:  # noqa: BLE001 - shown to the operator instead
        health = {
            "name": runnable.name,
            "kind": "unknown",
            "state": "unknown",
            "error": f"{type(exc).__name__}: {exc}",
        }
    # A bridge's or relay's error and detail may quote the database or Couch URL it uses.
    return redacted({"runnable": runnable.name, **health})
