"""The Couch bridge's seqs live in the checkpoint store's rows: saved and read with the count
of changes, reset by an operator like any checkpoint, and migrated from the table an older
bridge kept them in, so an upgrade re-reads nothing."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import orjson
import sqlalchemy as sa

from changefeed.app import App
from changefeed.change import TopicPartition
from changefeed.checkpoints import CheckpointStore, SeqCheckpoint, checkpoints_table
from changefeed.sources.couch_bridge import get_change_feed_pillow_for_db
from changefeed.testing.clock import FakeClock

TP = TopicPartition("couch:cases", 0)
LEGACY = "changefeed_seq_checkpoints"


def _old_state(
    url: str,
    legacy_rows: list[tuple[str, str, int]],
    offsets: dict[str, int],
    topic: str = TP.topic,
) -> None:
    """A state database as an older changefeed left it: checkpoint rows without seq columns
    and the bridge's seqs in a table of their own, as (bridge name, JSON seq, changes read)."""
    engine = sa.create_engine(url)
    old = sa.Table(
        checkpoints_table.name,
        sa.MetaData(),
        *(
            sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
            for c in checkpoints_table.columns
            if not c.name.startswith("seq")
        ),
    )
    legacy = sa.Table(
        LEGACY,
        old.metadata,
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("topic", sa.String(249), nullable=False),
        sa.Column("seq", sa.Text, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    old.metadata.create_all(engine)
    with engine.begin() as conn:
        for name, seq, position in legacy_rows:
            conn.execute(
                legacy.insert().values(
                    name=name, topic=topic, seq=seq, position=position, updated_at=1.0
                )
            )
        for name, offset in offsets.items():
            conn.execute(
                old.insert().values(
                    pillow=name, topic=topic, partition=0, offset=offset, updated_at=1.0
                )
            )
    engine.dispose()


def test_a_seq_is_saved_with_its_count_and_reset_like_any_checkpoint(db_url: str) -> None:
    store = CheckpointStore(db_url, clock=FakeClock(5.0))
    assert store.get_seq("bridge", TP) is None
    store.commit_seq("bridge", TP, '"12-g1AAAA"', 12)
    saved = store.get_seq("bridge", TP)
    assert saved is not None
    assert (saved.seq, saved.position, saved.updated_at) == ('"12-g1AAAA"', 12, 5.0)
    assert store.get("bridge") == {TP: 12}  # what `changefeed status` shows

    # An operator's move to anything but 0 cannot be turned into a seq: the seq stays.
    store.set("bridge", {TP: 3}, reason="by hand")
    saved = store.get_seq("bridge", TP)
    assert saved is not None and (saved.seq, saved.position) == ('"12-g1AAAA"', 12)
    # A reset to 0 means: read the source again from the start.
    store.set("bridge", {TP: 0}, reason="replay")
    assert store.get_seq("bridge", TP) is None
    store.commit_seq("bridge", TP, '"2-g1AAAA"', 2)
    saved = store.get_seq("bridge", TP)
    assert saved is not None and (saved.seq, saved.position) == ('"2-g1AAAA"', 2)

    # A pillow's rows at integer offsets have no seq, and progress leaves a seq alone.
    store.commit("pillow", {TP: 7})
    assert store.get_seq("pillow", TP) is None
    store.commit("bridge", {TP: 4})
    saved = store.get_seq("bridge", TP)
    assert saved is not None and saved.seq == '"2-g1AAAA"'


def test_seqs_of_an_older_bridge_are_migrated_on_first_use(db_url: str) -> None:
    _old_state(
        db_url,
        [("ran", "41", 41), ("reset", '"9-x"', 9), ("no-row", '"3-y"', 3)],
        {"ran": 41, "reset": 0, "pillow": 17},
    )
    store = CheckpointStore(db_url)
    ran = store.get_seq("ran", TP)
    assert ran is not None and (ran.seq, ran.position, ran.updated_at) == ("41", 41, 1.0)
    assert store.get_seq("reset", TP) is None  # reset by an operator before the upgrade
    no_row = store.get_seq("no-row", TP)
    assert no_row is not None and (no_row.seq, no_row.position) == ('"3-y"', 3)
    assert store.get("no-row") == {TP: 3}
    assert store.get("pillow") == {TP: 17}
    assert store.get_seq("pillow", TP) is None
    engine = sa.create_engine(db_url)
    assert not sa.inspect(engine).has_table(LEGACY)
    engine.dispose()
    # A second process finds everything migrated and changes nothing.
    again = CheckpointStore(db_url)
    assert again.get_seq("ran", TP) == ran


def test_processes_starting_together_migrate_once(db_url: str) -> None:
    """Several stores (as several processes would) start on an old database at once: each
    finds every seq, whichever of them moved the rows."""
    _old_state(db_url, [(f"b{i}", f'"{i}-x"', i + 1) for i in range(20)], {"b0": 1})
    start = threading.Barrier(4)
    found: list[list[SeqCheckpoint[str] | None]] = []
    failed: list[BaseException] = []

    def open_store() -> None:
        store = CheckpointStore(db_url)
        start.wait()
        try:
            found.append([store.get_seq(f"b{i}", TP) for i in range(20)])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failed.append(exc)
        finally:
            store.engine.dispose()

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failed == []
    for seqs in found:
        assert [(s.seq, s.position) if s else None for s in seqs] == [
            (f'"{i}-x"', i + 1) for i in range(20)
        ]


def test_an_upgraded_bridge_reads_on_from_its_old_seq(
    tmp_path: Path, couch_db: str, app: App
) -> None:
    docs = [{"_id": f"c{i}", "doc_type": "case"} for i in range(3)]
    httpx.post(f"{couch_db}/_bulk_docs", json={"docs": docs}).raise_for_status()
    bridge = get_change_feed_pillow_for_db(app, couch_db)
    assert bridge.run(forever=False) == 3
    saved = bridge.checkpoint
    assert saved is not None and saved.position == 3
    # The same state, as the older bridge would have written it.
    state = f"sqlite:///{tmp_path}/old-state.db"
    seq = orjson.dumps(saved.seq).decode()
    _old_state(state, [(bridge.name, seq, 3)], {bridge.name: 3}, bridge.topic)
    httpx.post(f"{couch_db}/_bulk_docs", json={"docs": [{"_id": "c3", "doc_type": "case"}]})

    upgraded = App(f"sqlite:///{tmp_path}/log.db", state)
    try:
        bridge = get_change_feed_pillow_for_db(upgraded, couch_db)
        assert bridge.run(forever=False) == 1  # only the new change
        after = bridge.checkpoint
        assert after is not None and after.position == 4 and after.seq != saved.seq
    finally:
        upgraded.close()
