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
from changefeed.pillow import Pillow
from changefeed.runner import Runnable

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
    for tp, (was, now_at) in app.checkpoints.rewinds(pillow.name).items():
        status.notes.append(f"{tp}: REWIND: checkpoint {now_at} is behind {was} set in the history")
    for entry in app.checkpoints.history(pillow.name, limit=20):
        if entry.kind == RETENTION:
            status.notes.append(
                f"{entry.tp}: {entry.reason} at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(entry.changed_at))}Z"
            )
    return status


def replication_slot_report(slot: str, probe: SlotProbe) -> dict[str, Any]:
    """A replication slot's state as ``probe`` reads it; an unreachable database is reported,
    not raised, so one bad slot does not hide the pillows' status."""
    try:
        return {"replication_slot": slot, **probe()}
    except Exception as exc:  # noqa: BLE001 - shown to the operator instead
        return {"replication_slot": slot, "exists": None, "error": f"{type(exc).__name__}: {exc}"}


def runnable_status(runnable: Runnable) -> dict[str, Any]:
    """A runnable that is not a pillow (a bridge, a relay), as its `Health` reports it.

    Read in the asking process, so liveness (``state``) says what this instance knows; the
    durable parts (a bridge's checkpoint, pending work) are what the runnable exposes in
    ``health().detail``. A runnable that cannot report is shown with its error."""
    try:
        health = runnable.health().to_dict()
    except Exception as exc:  # noqa: BLE001 - shown to the operator instead
        return {
            "runnable": runnable.name,
            "name": runnable.name,
            "kind": "unknown",
            "state": "unknown",
            "error": f"{type(exc).__name__}: {exc}",
        }
    return {"runnable": runnable.name, **health}
