"""The checkpoint store on SQLite and PostgreSQL: progress, operator changes with history, undo."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from changefeed.change import TopicPartition
from changefeed.checkpoints import (
    HISTORY_KINDS,
    RETENTION,
    SET,
    UNDO,
    CheckpointStore,
    current_actor,
    history_table,
)
from changefeed.testing.clock import FakeClock

TP0 = TopicPartition("form", 0)
TP1 = TopicPartition("form", 1)
TP2 = TopicPartition("case", 0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(db_url: str, clock: FakeClock) -> CheckpointStore:
    return CheckpointStore(db_url, clock=clock)


def test_commit_and_get(store: CheckpointStore, clock: FakeClock) -> None:
    assert store.get("p") == {}
    store.commit("p", {TP0: 10, TP1: 3})
    clock.now = 1005.0
    store.commit("p", {TP0: 12})
    store.commit("other", {TP2: 1})
    assert store.get("p") == {TP0: 12, TP1: 3}
    detailed = store.get_detailed("p")
    assert detailed[TP0].updated_at == 1005.0
    assert detailed[TP1].updated_at == 1000.0
    assert store.pillows() == ["other", "p"]
    # Progress commits write no history.
    assert store.history("p") == []


def test_set_records_who_when_and_old_value(store: CheckpointStore, clock: FakeClock) -> None:
    store.commit("p", {TP0: 10})
    clock.now = 2000.0
    entries = store.set("p", {TP0: 0, TP1: 5}, reason="replay everything", changed_by="alice")
    assert store.get("p") == {TP0: 0, TP1: 5}
    by_tp = {e.tp: e for e in entries}
    assert (by_tp[TP0].old_offset, by_tp[TP0].new_offset) == (10, 0)
    assert (by_tp[TP1].old_offset, by_tp[TP1].new_offset) == (None, 5)
    history = store.history("p")
    assert {(h.tp, h.old_offset, h.new_offset) for h in history} == {(TP0, 10, 0), (TP1, None, 5)}
    assert all(h.changed_by == "alice" and h.changed_at == 2000.0 for h in history)
    assert all(h.reason == "replay everything" for h in history)
    assert store.history("nobody") == []


def test_set_defaults_actor(store: CheckpointStore) -> None:
    (entry,) = store.set("p", {TP0: 1}, reason="r")
    assert entry.changed_by == current_actor()
    assert "@" in entry.changed_by


def test_set_rejects_negative_offsets_atomically(store: CheckpointStore) -> None:
    store.commit("p", {TP0: 4})
    with pytest.raises(ValueError, match=">= 0"):
        store.set("p", {TP0: 1, TP1: -1}, reason="bad")
    assert store.get("p") == {TP0: 4}
    assert store.history("p") == []


def test_undo_restores_old_value(store: CheckpointStore) -> None:
    store.commit("p", {TP0: 100})
    (bad,) = store.set("p", {TP0: 0}, reason="oops", changed_by="bob")
    store.commit("p", {TP0: 7})  # the pillow replayed a little meanwhile
    undo = store.undo(bad.id, changed_by="carol")
    assert store.get("p") == {TP0: 100}
    assert (undo.old_offset, undo.new_offset, undo.changed_by) == (7, 100, "carol")
    assert undo.reason == f"undo #{bad.id}"
    assert store.history("p")[0].id == undo.id  # newest first


def test_undo_of_first_set_removes_checkpoint(store: CheckpointStore) -> None:
    (entry,) = store.set("p", {TP1: 50}, reason="skip ahead")
    undo = store.undo(entry.id)
    assert TP1 not in store.get("p")
    assert (undo.old_offset, undo.new_offset) == (50, None)
    assert len(store.history("p")) == 2


def test_undo_unknown_entry(store: CheckpointStore) -> None:
    with pytest.raises(LookupError, match="no checkpoint history entry 999"):
        store.undo(999)


def test_history_limit(store: CheckpointStore) -> None:
    for i in range(5):
        store.set("p", {TP0: i}, reason=f"step {i}")
    history = store.history("p", limit=3)
    assert [h.new_offset for h in history] == [4, 3, 2]


def test_history_records_the_kind_of_move(store: CheckpointStore) -> None:
    (operator,) = store.set("p", {TP0: 5}, reason="replay")
    (jump,) = store.set("p", {TP0: 9}, reason="offset 5 removed; jumped to 9", kind=RETENTION)
    undo = store.undo(jump.id)
    assert (operator.kind, jump.kind, undo.kind) == (SET, RETENTION, UNDO)
    assert [h.kind for h in store.history("p")] == [UNDO, RETENTION, SET]
    assert store.history("p")[1].to_dict()["kind"] == RETENTION
    assert {
        "set",
        "reset",
        "to-head",
        "retention",
        "undo",
        "import",
        "copy",
        "merge",
    } == HISTORY_KINDS
    with pytest.raises(ValueError, match="kind"):
        store.set("p", {TP0: 1}, reason="r", kind="whatever")


def old_history_table() -> sa.Table:
    """The history table as changefeed created it before entries had a ``kind``."""
    columns = [
        sa.Column(
            c.name,
            c.type,
            primary_key=c.primary_key,
            nullable=c.nullable,
            autoincrement=c.autoincrement,
        )
        for c in history_table.columns
        if c.name != "kind"
    ]
    return sa.Table(history_table.name, sa.MetaData(), *columns)


def test_state_database_from_before_history_kinds_is_migrated(db_url: str) -> None:
    """A history table without ``kind`` gets the column; old entries are classified from the
    reasons changefeed wrote, so ``changefeed status`` still finds old retention jumps."""
    engine = sa.create_engine(db_url)
    reasons = [
        "set by operator",
        "offset 3 removed by retention; jumped to earliest 10",
        "reset to earliest by operator",
        "moved to head by operator",
        "undo #2",
        "my own reason",
    ]
    old = old_history_table()
    old.create(engine)
    with engine.begin() as conn:
        for i, reason in enumerate(reasons, start=1):
            conn.execute(
                old.insert().values(
                    pillow="p",
                    topic="form",
                    partition=0,
                    new_offset=i,
                    changed_at=1.0,
                    changed_by="old@host:1",
                    reason=reason,
                )
            )
    engine.dispose()
    store = CheckpointStore(db_url)
    kinds = [h.kind for h in reversed(store.history("p"))]
    assert kinds == ["set", "retention", "reset", "to-head", "undo", "set"]
    (entry,) = store.set("p", {TP0: 1}, reason="after the migration", kind="reset")
    assert store.history("p", limit=1)[0].kind == "reset" == entry.kind
    CheckpointStore(db_url).create()  # a second process finds the column there
