"""Where a reindex stands, kept in the state database so an interrupted one can resume.

One row per job (which pillow, the log heads recorded when it started, whether it finished)
and one per (job, store) with the last document id done. Kept apart from the reindex loop
so that the loop reads as what it does, and this as what survives a crash.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import sqlalchemy as sa

from changefeed.change import TopicPartition
from changefeed.clock import SYSTEM_CLOCK, Clock
from changefeed.db import create_tables, upsert

metadata = sa.MetaData()

jobs_table = sa.Table(
    "changefeed_reindex_jobs",
    metadata,
    sa.Column("job", sa.String(400), primary_key=True),
    sa.Column("pillow", sa.String(128), nullable=False),
    sa.Column("heads", sa.Text, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float, nullable=True),
)

progress_table = sa.Table(
    "changefeed_reindex_progress",
    metadata,
    sa.Column("job", sa.String(400), primary_key=True),
    sa.Column("store", sa.String(400), primary_key=True),
    sa.Column("last_id", sa.Text, nullable=True),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("ordered", sa.Boolean, nullable=False),
    sa.Column("done", sa.Boolean, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)


@dataclass(slots=True)
class StoreProgress:
    """How far a job has read one store: the last id of the last finished chunk."""

    last_id: str | None = None
    position: int = 0
    ordered: bool = True
    done: bool = False


class ReindexJobs:
    """The saved state of one reindex job."""

    def __init__(
        self, engine: sa.Engine, job: str, pillow: str, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.engine = engine
        self.job = job
        self.pillow = pillow
        self.clock = clock
        create_tables(engine, metadata)

    def unfinished_heads(self) -> dict[TopicPartition, int] | None:
        """The log heads of an interrupted run of this job, or None."""
        j = jobs_table
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(j.c.heads).where(j.c.job == self.job, j.c.finished_at.is_(None))
            ).first()
        if row is None:
            return None
        return {TopicPartition(t, p): o for t, p, o in orjson.loads(row[0])}

    def start(self, heads: dict[TopicPartition, int]) -> None:
        """Begin a fresh run: forget earlier progress, remember the heads."""
        encoded = orjson.dumps([[tp.topic, tp.partition, off] for tp, off in sorted(heads.items())])
        row = {
            "job": self.job,
            "pillow": self.pillow,
            "heads": encoded.decode(),
            "started_at": self.clock.time(),
            "finished_at": None,
        }
        with self.engine.begin() as conn:
            conn.execute(progress_table.delete().where(progress_table.c.job == self.job))
            upsert(conn, jobs_table, [row], ["job"])

    def finish(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                jobs_table.update()
                .where(jobs_table.c.job == self.job)
                .values(finished_at=self.clock.time())
            )

    def load(self, store: str) -> StoreProgress:
        p = progress_table
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(p.c.last_id, p.c.position, p.c.ordered, p.c.done).where(
                    p.c.job == self.job, p.c.store == store
                )
            ).first()
        if row is None:
            return StoreProgress()
        return StoreProgress(row.last_id, int(row.position), bool(row.ordered), bool(row.done))

    def save(self, store: str, state: StoreProgress) -> None:
        row = {
            "job": self.job,
            "store": store,
            "last_id": state.last_id,
            "position": state.position,
            "ordered": state.ordered,
            "done": state.done,
            "updated_at": self.clock.time(),
        }
        with self.engine.begin() as conn:
            upsert(conn, progress_table, [row], ["job", "store"])
