"""Checkpoints: per (pillow, topic, partition), the next offset to read.

Progress writes are plain upserts (one per batch). Operator changes and automatic jumps (an
offset removed by retention) also go to a history table with who, when, the old value and
what kind of move it was, so a bad reset can be undone and ``changefeed status`` can point
out retention jumps without reading the free-text reason.

A reader whose source positions are opaque (a CouchDB seq) keeps them in the same row as its
count of changes read (`CheckpointStore.commit_seq`), so it shows in ``changefeed status``
like any pillow and an operator's reset reaches it through the same table.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import sqlalchemy as sa

from changefeed.change import TopicPartition
from changefeed.clock import SYSTEM_CLOCK, Clock
from changefeed.db import create_tables, make_engine, upsert

metadata = sa.MetaData()

checkpoints_table = sa.Table(
    "changefeed_checkpoints",
    metadata,
    sa.Column("pillow", sa.String(128), primary_key=True),
    sa.Column("topic", sa.String(249), primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("seq", sa.Text, nullable=True),
    sa.Column("seq_offset", sa.BigInteger, nullable=True),
)
"""``seq``: an opaque source position (text the reader encodes), ``seq_offset``: the offset
it was saved at; both NULL for partitions read at integer offsets."""

_LEGACY_SEQ_TABLE = sa.Table(
    "changefeed_seq_checkpoints",
    sa.MetaData(),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("topic", sa.String(249), nullable=False),
    sa.Column("seq", sa.Text, nullable=False),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
"""Where the Couch bridge kept its seqs before they lived in the checkpoint row (read once,
to migrate, then dropped)."""

_GUARDED_UPDATE = (
    checkpoints_table.update()
    .where(
        checkpoints_table.c.pillow == sa.bindparam("b_pillow"),
        checkpoints_table.c.topic == sa.bindparam("b_topic"),
        checkpoints_table.c.partition == sa.bindparam("b_partition"),
        checkpoints_table.c.offset == sa.bindparam("b_expected"),
    )
    .values(offset=sa.bindparam("b_offset"), updated_at=sa.bindparam("b_now"))
)
"""Progress for a partition whose row still holds what this store last wrote there."""

history_table = sa.Table(
    "changefeed_checkpoint_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("pillow", sa.String(128), nullable=False, index=True),
    sa.Column("topic", sa.String(249), nullable=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("old_offset", sa.BigInteger, nullable=True),
    sa.Column("new_offset", sa.BigInteger, nullable=True),
    sa.Column("changed_at", sa.Float, nullable=False),
    sa.Column("changed_by", sa.String(255), nullable=False),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False, server_default="set"),
)

SET = "set"
"""An operator set a partition's checkpoint to a given offset."""
RESET = "reset"
"""An operator moved checkpoints back to the earliest offset (everything is re-read)."""
TO_HEAD = "to-head"
"""An operator moved checkpoints to the head (unread changes are skipped)."""
RETENTION = "retention"
"""The pillow jumped to the earliest offset because retention removed its position."""
UNDO = "undo"
"""An earlier history entry was undone."""
IMPORT = "import"
"""Checkpoints were imported from another system (e.g. pillowtop)."""
COPY = "copy"
"""An operator copied another pillow's checkpoints onto this one."""
MERGE = "merge"
"""An operator merged several pillows' checkpoints (minimum per partition) onto this one."""
HISTORY_KINDS = frozenset({SET, RESET, TO_HEAD, RETENTION, UNDO, IMPORT, COPY, MERGE})
"""What a checkpoint history entry can record (the ``kind`` column)."""

_KIND_FROM_REASON = [
    (history_table.c.reason.like("%retention%"), RETENTION),
    (history_table.c.reason.like("undo #%"), UNDO),
    (history_table.c.reason == "reset to earliest by operator", RESET),
    (history_table.c.reason == "moved to head by operator", TO_HEAD),
]
"""How entries written before the ``kind`` column are classified when it is added: from the
reasons changefeed itself wrote (an operator's own ``--reason`` stays ``set``)."""


def current_actor() -> str:
    """Who is making a change, for the history: user@host:pid."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    tp: TopicPartition
    offset: int
    updated_at: float


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    id: int
    pillow: str
    tp: TopicPartition
    old_offset: int | None
    new_offset: int | None
    changed_at: float
    changed_by: str
    reason: str
    kind: str = SET

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form, for the CLI and the dashboard."""
        return {
            "id": self.id,
            "pillow": self.pillow,
            "topic": self.tp.topic,
            "partition": self.tp.partition,
            "old_offset": self.old_offset,
            "new_offset": self.new_offset,
            "changed_at": self.changed_at,
            "changed_by": self.changed_by,
            "reason": self.reason,
            "kind": self.kind,
        }


SeqT = TypeVar("SeqT")


@dataclass(frozen=True, slots=True)
class SeqCheckpoint(Generic[SeqT]):
    """An opaque source position and the count of changes read up to it. The store keeps
    ``seq`` as text; a reader may hand out a decoded copy."""

    tp: TopicPartition
    seq: SeqT
    position: int
    updated_at: float


def partition_lag(head: int, checkpoint: int | None) -> int:
    """Changes in a partition not yet checkpointed (a partition never read lags by its head).
    One definition, so ``changefeed status``, metrics and writers' throttles agree."""
    return max(0, head - (checkpoint or 0))


def _rows(pillow: str, offsets: Mapping[TopicPartition, int], now: float) -> list[dict[str, Any]]:
    """Checkpoint table rows for ``offsets``, written at ``now``."""
    return [
        {
            "pillow": pillow,
            "topic": tp.topic,
            "partition": tp.partition,
            "offset": off,
            "updated_at": now,
        }
        for tp, off in offsets.items()
    ]


class CheckpointStore:
    def __init__(self, engine: sa.Engine | str, clock: Clock = SYSTEM_CLOCK) -> None:
        self.engine = make_engine(engine)
        self.clock = clock
        self._created = False
        self._commit_stmt: Any = None
        self._known: dict[str, dict[TopicPartition, int]] = {}
        """Per pillow, the offsets this store last read or wrote for it: a stored row that
        differs was moved by someone else (an operator) and must not be overwritten."""

    def create(self) -> None:
        if not self._created:
            create_tables(self.engine, metadata)
            _add_column(
                self.engine, history_table.c.kind, default=SET, backfill=_classify_old_entries
            )
            _add_column(self.engine, checkpoints_table.c.seq)
            _add_column(self.engine, checkpoints_table.c.seq_offset)
            _import_legacy_seqs(self.engine)
            self._created = True

    def get(self, pillow: str) -> dict[TopicPartition, int]:
        offsets = {tp: cp.offset for tp, cp in self.get_detailed(pillow).items()}
        known = self._known.setdefault(pillow, {})
        for tp, off in offsets.items():
            known.setdefault(tp, off)  # the value a pillow starts from
        return offsets

    def get_detailed(self, pillow: str) -> dict[TopicPartition, Checkpoint]:
        self.create()
        t = checkpoints_table
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.c.topic, t.c.partition, t.c.offset, t.c.updated_at).where(
                    t.c.pillow == pillow
                )
            ).all()
        return {
            TopicPartition(topic, part): Checkpoint(TopicPartition(topic, part), off, ts)
            for topic, part, off, ts in rows
        }

    def _commit_statement(self) -> Any:
        """The progress upsert, built once: building it per batch cost more than running it."""
        if self._commit_stmt is None:
            dialect = self.engine.dialect.name
            if dialect not in ("postgresql", "sqlite"):
                return None
            from sqlalchemy.dialects import postgresql, sqlite

            t = checkpoints_table
            ins: Any = postgresql.insert(t) if dialect == "postgresql" else sqlite.insert(t)
            self._commit_stmt = ins.on_conflict_do_update(
                index_elements=["pillow", "topic", "partition"],
                set_={"offset": ins.excluded.offset, "updated_at": ins.excluded.updated_at},
            )
        return self._commit_stmt

    def commit(
        self, pillow: str, offsets: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        """Record progress (no history: this happens after every batch).

        A partition whose stored offset is no longer the one this store last read or wrote
        for ``pillow`` was moved by someone else (``checkpoint reset`` while the pillow
        runs): it is not overwritten, and returned as ``{partition: stored offset}`` so the
        caller reads on from there. Without that, the move would be silently undone while
        the history claims it happened."""
        if not offsets:
            return {}
        self.create()
        now = self.clock.time()
        known = self._known.setdefault(pillow, {})
        stmt = self._commit_statement()
        t = checkpoints_table
        moved: dict[TopicPartition, int] = {}
        with self.engine.begin() as conn:
            # The usual case in one statement: rows still holding what we last wrote move on.
            # Only when fewer rows matched (moved, or deleted) are the rows read to find out.
            check = [tp for tp in offsets if tp in known]
            fresh = {tp: off for tp, off in offsets.items() if tp not in known}
            if check:
                params = [
                    {
                        "b_pillow": pillow,
                        "b_topic": tp.topic,
                        "b_partition": tp.partition,
                        "b_expected": known[tp],
                        "b_offset": offsets[tp],
                        "b_now": now,
                    }
                    for tp in check
                ]
                matched = conn.execute(_GUARDED_UPDATE, params).rowcount
                if matched != len(check):
                    query = sa.select(t.c.topic, t.c.partition, t.c.offset).where(
                        t.c.pillow == pillow
                    )
                    if self.engine.dialect.name == "postgresql":
                        query = query.with_for_update()
                    for topic, part, off in conn.execute(query):
                        tp = TopicPartition(topic, part)
                        if tp in offsets and tp in known and off not in (known[tp], offsets[tp]):
                            moved[tp] = off
                    fresh.update((tp, offsets[tp]) for tp in check if tp not in moved)
            write = {tp: off for tp, off in offsets.items() if tp not in moved}
            rows = _rows(pillow, fresh, now)
            if rows and stmt is not None:
                conn.execute(stmt, rows)
            elif rows:  # pragma: no cover - other dialects
                upsert(conn, t, rows, ["pillow", "topic", "partition"])
        known.update(write)
        known.update(moved)
        return moved

    def get_seq(self, pillow: str, tp: TopicPartition) -> SeqCheckpoint[str] | None:
        """The opaque position saved with `commit_seq`, or None when never saved or reset to
        0 by an operator since (``changefeed checkpoint set NAME TOPIC 0 0`` replays the
        source from the start). Any other move leaves it: a seq cannot be derived from a
        count."""
        self.create()
        t = checkpoints_table
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.c.offset, t.c.seq, t.c.seq_offset, t.c.updated_at).where(
                    (t.c.pillow == pillow)
                    & (t.c.topic == tp.topic)
                    & (t.c.partition == tp.partition)
                )
            ).first()
        if row is None or row.seq is None or (row.offset == 0 and row.seq_offset != 0):
            return None
        return SeqCheckpoint(tp, row.seq, row.seq_offset, row.updated_at)

    def commit_seq(self, pillow: str, tp: TopicPartition, seq: str, position: int) -> None:
        """Save an opaque position with ``position``, the changes read up to it, which is
        also the partition's offset (what ``changefeed status`` shows)."""
        self.create()
        now = self.clock.time()
        row = {**_rows(pillow, {tp: position}, now)[0], "seq": seq, "seq_offset": position}
        with self.engine.begin() as conn:
            upsert(conn, checkpoints_table, [row], ["pillow", "topic", "partition"])

    def moved(
        self, pillow: str, expected: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        """Partitions whose stored offset differs from ``expected`` (what a reader with its
        own position store last wrote): ``{partition: stored offset}``. A missing row counts
        as offset 0 (an operator deleted or reset it)."""
        stored = self.get_detailed(pillow)
        out = {}
        for tp, off in expected.items():
            cp = stored.get(tp)
            now = cp.offset if cp else 0
            if now != off:
                out[tp] = now
        return out

    def rewinds(self, pillow: str) -> dict[TopicPartition, tuple[int, int]]:
        """Partitions whose checkpoint is behind the offset of their latest history entry:
        ``{partition: (offset the history last set, offset now)}``. Progress only moves a
        checkpoint forwards and every deliberate move is in the history, so this is a rewind
        nobody recorded (e.g. a stale process wrote an old offset)."""
        self.create()
        h = history_table
        latest = (
            sa.select(h.c.topic, h.c.partition, sa.func.max(h.c.id).label("id"))
            .where(h.c.pillow == pillow)
            .group_by(h.c.topic, h.c.partition)
            .subquery()
        )
        query = sa.select(h.c.topic, h.c.partition, h.c.new_offset).join(
            latest, h.c.id == latest.c.id
        )
        with self.engine.connect() as conn:
            last = {TopicPartition(t, p): off for t, p, off in conn.execute(query)}
        current = {tp: cp.offset for tp, cp in self.get_detailed(pillow).items()}
        return {
            tp: (off, current[tp])
            for tp, off in sorted(last.items())
            if off is not None and tp in current and current[tp] < off
        }

    def set(
        self,
        pillow: str,
        offsets: Mapping[TopicPartition, int],
        *,
        reason: str,
        kind: str = SET,
        changed_by: str | None = None,
    ) -> list[HistoryEntry]:
        """Move checkpoints on purpose, recording the old values in the history under
        ``kind`` (one of `HISTORY_KINDS`) with the human-readable ``reason``. A partition
        already at its offset is not moved and records nothing: the history holds moves."""
        if kind not in HISTORY_KINDS:
            raise ValueError(f"unknown checkpoint history kind {kind!r}")
        self.create()
        actor = changed_by or current_actor()
        now = self.clock.time()
        t, h = checkpoints_table, history_table
        entries = []
        with self.engine.begin() as conn:
            old = {
                TopicPartition(topic, part): off
                for topic, part, off in conn.execute(
                    sa.select(t.c.topic, t.c.partition, t.c.offset).where(t.c.pillow == pillow)
                )
            }
            for tp, new in sorted(offsets.items()):
                if new < 0:
                    raise ValueError(f"offset must be >= 0, got {new} for {tp}")
            offsets = {tp: new for tp, new in offsets.items() if old.get(tp) != new}
            for tp, new in sorted(offsets.items()):
                res = conn.execute(
                    h.insert().values(
                        pillow=pillow,
                        topic=tp.topic,
                        partition=tp.partition,
                        old_offset=old.get(tp),
                        new_offset=new,
                        changed_at=now,
                        changed_by=actor,
                        reason=reason,
                        kind=kind,
                    )
                )
                pk = res.inserted_primary_key
                entries.append(
                    HistoryEntry(
                        int(pk[0]) if pk else 0,
                        pillow,
                        tp,
                        old.get(tp),
                        new,
                        now,
                        actor,
                        reason,
                        kind,
                    )
                )
            if offsets:
                upsert(conn, t, _rows(pillow, offsets, now), ["pillow", "topic", "partition"])
        # A move made through this store (the pillow's own retention jump, a reindex) is
        # known to it; only moves by other stores (another process's CLI) are detected.
        self._known.setdefault(pillow, {}).update(offsets)
        return entries

    def history(self, pillow: str | None = None, limit: int = 100) -> list[HistoryEntry]:
        self.create()
        h = history_table
        query = sa.select(h).order_by(h.c.id.desc()).limit(limit)
        if pillow is not None:
            query = query.where(h.c.pillow == pillow)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            HistoryEntry(
                r.id,
                r.pillow,
                TopicPartition(r.topic, r.partition),
                r.old_offset,
                r.new_offset,
                r.changed_at,
                r.changed_by,
                r.reason,
                r.kind,
            )
            for r in rows
        ]

    def undo(self, entry_id: int, changed_by: str | None = None) -> HistoryEntry:
        """Restore the offset a history entry replaced (itself recorded in the history).
        An entry is undone once: a second undo would move the checkpoint again from
        wherever it has got to since, so it is refused (`LookupError`), as is an undo that
        would move nothing."""
        self.create()
        h = history_table
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(h).where(h.c.id == entry_id)).first()
            undone = conn.execute(
                sa.select(h.c.id)
                .where((h.c.kind == UNDO) & (h.c.reason == f"undo #{entry_id}"))
                .limit(1)
            ).scalar()
        if row is None:
            raise LookupError(f"no checkpoint history entry {entry_id}")
        if undone is not None:
            raise LookupError(f"checkpoint history entry {entry_id} was undone already (#{undone})")
        tp = TopicPartition(row.topic, row.partition)
        if row.old_offset is None:
            with self.engine.begin() as conn:
                t = checkpoints_table
                conn.execute(
                    t.delete().where(
                        (t.c.pillow == row.pillow)
                        & (t.c.topic == tp.topic)
                        & (t.c.partition == tp.partition)
                    )
                )
                res = conn.execute(
                    h.insert().values(
                        pillow=row.pillow,
                        topic=tp.topic,
                        partition=tp.partition,
                        old_offset=row.new_offset,
                        new_offset=None,
                        changed_at=self.clock.time(),
                        changed_by=changed_by or current_actor(),
                        reason=f"undo #{entry_id}",
                        kind=UNDO,
                    )
                )
            pk = res.inserted_primary_key
            return HistoryEntry(
                int(pk[0]) if pk else 0,
                row.pillow,
                tp,
                row.new_offset,
                None,
                self.clock.time(),
                changed_by or current_actor(),
                f"undo #{entry_id}",
                UNDO,
            )
        entries = self.set(
            row.pillow,
            {tp: row.old_offset},
            reason=f"undo #{entry_id}",
            kind=UNDO,
            changed_by=changed_by,
        )
        if not entries:
            raise LookupError(f"nothing to undo: {row.pillow} {tp} is at {row.old_offset} already")
        return entries[0]

    def pillows(self) -> list[str]:
        self.create()
        t = checkpoints_table
        with self.engine.connect() as conn:
            return [
                r[0] for r in conn.execute(sa.select(t.c.pillow).distinct().order_by(t.c.pillow))
            ]


def _add_column(
    engine: sa.Engine,
    column: sa.Column[Any],
    *,
    default: str | None = None,
    backfill: Callable[[sa.Connection], None] | None = None,
) -> None:
    """Migrate a state database made before ``column`` existed: add it (NOT NULL with
    ``default``, else nullable) and ``backfill`` the old rows in the same transaction. Safe
    when another process does the same at the same time."""
    table = column.table
    if column.name in {c["name"] for c in sa.inspect(engine).get_columns(table.name)}:
        return
    ddl = f"{column.name} {column.type.compile(dialect=engine.dialect)}"
    if default is not None:
        ddl += f" NOT NULL DEFAULT '{default}'"
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))
            if backfill is not None:
                backfill(conn)
    except (sa.exc.OperationalError, sa.exc.ProgrammingError):
        # Another process added it first; anything else is a real failure.
        if column.name not in {c["name"] for c in sa.inspect(engine).get_columns(table.name)}:
            raise


def _classify_old_entries(conn: sa.Connection) -> None:
    """Give history entries written before the ``kind`` column theirs (`_KIND_FROM_REASON`)."""
    for where, kind in _KIND_FROM_REASON:
        conn.execute(history_table.update().where(where).values(kind=kind))


def _import_legacy_seqs(engine: sa.Engine) -> None:
    """Move the seqs an older Couch bridge kept in a table of their own into the checkpoint
    rows, then drop that table, so an upgrade re-reads nothing. Safe when another process
    does the same at the same time."""
    legacy, t = _LEGACY_SEQ_TABLE, checkpoints_table
    if not sa.inspect(engine).has_table(legacy.name):
        return
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":  # the first process in moves them all
                conn.execute(sa.text(f"LOCK TABLE {legacy.name} IN ACCESS EXCLUSIVE MODE"))
            for row in conn.execute(sa.select(legacy)).all():
                where = (t.c.pillow == row.name) & (t.c.topic == row.topic) & (t.c.partition == 0)
                saved = {"seq": row.seq, "seq_offset": row.position}
                if conn.execute(t.update().where(where).values(**saved)).rowcount == 0:
                    conn.execute(
                        t.insert().values(
                            pillow=row.name,
                            topic=row.topic,
                            partition=0,
                            offset=row.position,
                            updated_at=row.updated_at,
                            **saved,
                        )
                    )
            legacy.drop(conn)
    except (sa.exc.OperationalError, sa.exc.ProgrammingError):
        # Another process moved them first; anything else is a real failure.
        if sa.inspect(engine).has_table(legacy.name):
            raise
