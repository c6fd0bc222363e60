"""Checkpoints for sources whose positions are opaque (a CouchDB seq), not integer offsets.

A small key/value table beside the checkpoint store: per reader name, the position encoded
as JSON (so an int stays an int and a string a string) and a running count of changes read.
The count is also written, in the same transaction, as an ordinary checkpoint row for the
pseudo partition ``(<topic>, 0)``, so ``changefeed status`` and the dashboard show the reader
like any pillow, with lag = changes still pending at the source.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from changefeed.checkpoints import CheckpointStore, checkpoints_table
from changefeed.db import upsert

metadata = sa.MetaData()

seq_checkpoints_table = sa.Table(
    "changefeed_seq_checkpoints",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("topic", sa.String(249), nullable=False),
    sa.Column("seq", sa.Text, nullable=False),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)


@dataclass(frozen=True, slots=True)
class SeqCheckpoint:
    name: str
    topic: str
    seq: Any
    position: int
    """Changes read so far (the offset shown in the checkpoint row)."""
    updated_at: float


class SeqCheckpointStore:
    """Opaque positions on the same database as the app's `CheckpointStore`."""

    def __init__(
        self, checkpoints: CheckpointStore, clock: Callable[[], float] = time.time
    ) -> None:
        self.checkpoints = checkpoints
        self.engine = checkpoints.engine
        self.clock = clock
        self._created = False

    def create(self) -> None:
        if not self._created:
            self.checkpoints.create()
            metadata.create_all(self.engine, checkfirst=True)
            self._created = True

    def get(self, name: str) -> SeqCheckpoint | None:
        """The saved position, or None when never saved or reset to 0 by an operator
        (``changefeed checkpoint set NAME TOPIC 0 0`` restarts from the beginning)."""
        self.create()
        s, c = seq_checkpoints_table, checkpoints_table
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(s).where(s.c.name == name)).first()
            if row is None:
                return None
            offset = conn.execute(
                sa.select(c.c.offset).where(
                    (c.c.pillow == name) & (c.c.topic == row.topic) & (c.c.partition == 0)
                )
            ).scalar()
        if offset == 0 and row.position != 0:
            return None
        return SeqCheckpoint(name, row.topic, orjson.loads(row.seq), row.position, row.updated_at)

    def commit(self, name: str, topic: str, seq: Any, position: int) -> None:
        """Save the position and the checkpoint row in one transaction."""
        self.create()
        now = self.clock()
        with self.engine.begin() as conn:
            upsert(
                conn,
                seq_checkpoints_table,
                [
                    {
                        "name": name,
                        "topic": topic,
                        "seq": orjson.dumps(seq).decode(),
                        "position": position,
                        "updated_at": now,
                    }
                ],
                ["name"],
            )
            upsert(
                conn,
                checkpoints_table,
                [
                    {
                        "pillow": name,
                        "topic": topic,
                        "partition": 0,
                        "offset": position,
                        "updated_at": now,
                    }
                ],
                ["pillow", "topic", "partition"],
            )

    def delete(self, name: str) -> None:
        self.create()
        with self.engine.begin() as conn:
            conn.execute(seq_checkpoints_table.delete().where(seq_checkpoints_table.c.name == name))
            conn.execute(checkpoints_table.delete().where(checkpoints_table.c.pillow == name))
