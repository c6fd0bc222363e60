"""Where a pillow stands: per partition checkpoint, head, lag and checkpoint age.

Shared by ``changefeed status``, the metrics exporter and the dashboard, so all three agree.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from changefeed.app import App
from changefeed.pillow import Pillow


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    topic: str
    partition: int
    checkpoint: int | None
    head: int
    lag: int
    checkpoint_age: float | None
    """Seconds since the checkpoint was last written (None: never)."""


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
        status.partitions.append(
            PartitionStatus(
                tp.topic,
                tp.partition,
                offset,
                head,
                max(0, head - (offset or 0)),
                None if cp is None else max(0.0, now - cp.updated_at),
            )
        )
    counts = app.error_queue.counts(pillow.name)
    status.errors_pending = counts.get("pending", 0)
    status.errors_parked = counts.get("parked", 0)
    for entry in app.checkpoints.history(pillow.name, limit=20):
        if "retention" in entry.reason:
            status.notes.append(
                f"{entry.tp}: {entry.reason} at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(entry.changed_at))}Z"
            )
    return status


def replication_slot_status(database_url: str, slot: str) -> dict[str, Any]:
    """A CDC slot's lag (see `changefeed.sources.postgres_cdc.slot_status`); an unreachable
    database is reported, not raised, so one bad slot does not hide the pillows' status."""
    from changefeed.sources.postgres_cdc import slot_status

    try:
        return {"replication_slot": slot, **slot_status(database_url, slot)}
    except Exception as exc:  # noqa: BLE001 - shown to the operator instead
        return {"replication_slot": slot, "exists": None, "error": f"{type(exc).__name__}: {exc}"}
