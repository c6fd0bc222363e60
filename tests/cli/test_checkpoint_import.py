"""``changefeed checkpoint import-pillowtop``: a pillow takes over where an HQ pillow stopped.

HQ's database is played by a PostgreSQL table shaped like HQ's ``pillowtop_kafkacheckpoint``
(Django model ``KafkaCheckpoint``: id, checkpoint_id, topic, partition, offset,
doc_modification_time, last_modified; unique per checkpoint_id/topic/partition), written
with plain SQL as HQ's ORM would leave it. Everything runs through the real entry point.
"""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
import sqlalchemy as sa

from changefeed import ChangeMeta
from changefeed.backends import open_backend
from changefeed.change import TopicPartition
from tests._cli import cf, recorder_env

ROOT = Path(__file__).resolve().parents[2]
TOPIC = "records"

HQ_TABLE_DDL = """
CREATE TABLE pillowtop_kafkacheckpoint (
    id serial PRIMARY KEY,
    checkpoint_id varchar(126) NOT NULL,
    topic varchar(126) NOT NULL,
    partition integer NOT NULL,
    "offset" bigint NOT NULL,
    doc_modification_time timestamp with time zone NULL,
    last_modified timestamp with time zone NOT NULL,
    UNIQUE (checkpoint_id, topic, partition)
)
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return recorder_env(tmp_path)


def publish(env: dict[str, str], n: int) -> dict[TopicPartition, int]:
    """Publish n stubs to the two partitions of ``records``; the heads afterwards."""
    backend = open_backend(env["CHANGEFEED_LOG"])
    try:
        with backend.publisher() as pub:
            pub.publish_many((TOPIC, ChangeMeta(f"doc-{i}", "memory", "docs")) for i in range(n))
        feed = backend.change_feed([TOPIC])
        heads = feed.latest_offsets()
        feed.close()
        return heads
    finally:
        backend.close()


def hq_database(url: str, rows: list[tuple[str, str, int, int]]) -> None:
    """HQ's checkpoint table with (checkpoint_id, topic, partition, offset) rows."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(HQ_TABLE_DDL))
        for cid, topic, partition, offset in rows:
            conn.execute(
                sa.text(
                    'INSERT INTO pillowtop_kafkacheckpoint (checkpoint_id, topic, partition, "offset",'
                    " doc_modification_time, last_modified) VALUES (:c, :t, :p, :o, now(), now())"
                ),
                {"c": cid, "t": topic, "p": partition, "o": offset},
            )
    engine.dispose()


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_import_continues_at_exactly_the_imported_offsets(
    env: dict[str, str], pg_url: str, tmp_path: Path
) -> None:
    heads = publish(env, 40)
    assert sorted(tp.partition for tp in heads) == [0, 1] and all(heads.values())
    imported = {tp: head // 2 + tp.partition for tp, head in heads.items()}
    hq_database(
        pg_url,
        [("recorder", TOPIC, tp.partition, off) for tp, off in imported.items()]
        + [("hq-other-pillow", TOPIC, 0, 1), ("hq-other-pillow", TOPIC, 1, 1)],
    )

    dry = cf(
        env, "checkpoint", "import-pillowtop", "--from", pg_url, "--pillow", "recorder", "--dry-run"
    )
    assert dry.returncode == 0, dry.stderr
    assert not json.loads(cf(env, "checkpoint", "history", "recorder", "--json").stdout)

    result = cf(env, "checkpoint", "import-pillowtop", "--from", pg_url, "--pillow", "recorder")
    assert result.returncode == 0, result.stderr
    shown = json.loads(cf(env, "checkpoint", "show", "recorder", "--json").stdout)
    assert {TopicPartition(r["topic"], r["partition"]): r["checkpoint"] for r in shown} == imported
    history = json.loads(cf(env, "checkpoint", "history", "recorder", "--json").stdout)
    assert len(history) == 2
    assert all("pillowtop checkpoint 'recorder'" in h["reason"] for h in history)
    assert all(h.get("kind", "import") == "import" and h["old_offset"] is None for h in history)

    run = cf(env, "run", "recorder", "--once")
    assert run.returncode == 0, run.stderr
    recorded: dict[TopicPartition, list[int]] = defaultdict(list)
    for line in (tmp_path / "recorded.txt").read_text().splitlines():
        topic, partition, offset, _ = line.split()
        recorded[TopicPartition(topic, int(partition))].append(int(offset))
    # Nothing before the imported offsets (no reprocessing), nothing skipped after them.
    assert {tp: sorted(offs) for tp, offs in recorded.items()} == {
        tp: list(range(imported[tp], heads[tp])) for tp in heads
    }

    # Undo puts a partition back to "never read".
    undo = cf(env, "checkpoint", "undo", str(history[0]["id"]))
    assert undo.returncode == 0, undo.stderr
    undone = TopicPartition(history[0]["topic"], history[0]["partition"])
    shown = json.loads(cf(env, "checkpoint", "show", "recorder", "--json").stdout)
    assert [r["checkpoint"] for r in shown if r["partition"] == undone.partition] == [None]


def test_explicit_checkpoint_id(env: dict[str, str], pg_url: str) -> None:
    heads = publish(env, 10)
    hq_database(pg_url, [("case-pillow-cases_2026", TOPIC, tp.partition, 1) for tp in heads])
    missing = cf(env, "checkpoint", "import-pillowtop", "--from", pg_url, "--pillow", "recorder")
    assert_one_line_error(missing, "no pillowtop checkpoint rows", "'recorder'")
    result = cf(
        env,
        "checkpoint",
        "import-pillowtop",
        "--from",
        pg_url,
        "--pillow",
        "recorder",
        "--checkpoint-id",
        "case-pillow-cases_2026",
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(cf(env, "checkpoint", "show", "recorder", "--json").stdout)
    assert [r["checkpoint"] for r in shown] == [1, 1]


@pytest.mark.parametrize(
    "rows, words",
    [
        ([("recorder", TOPIC, 0, 1)], ["does not match", "no checkpoint for records[1]"]),
        (
            [("recorder", TOPIC, 0, 1), ("recorder", TOPIC, 1, 1), ("recorder", TOPIC, 2, 1)],
            ["does not match", "records[2]", "does not read"],
        ),
        (
            [("recorder", "case-sql", 0, 1), ("recorder", "case-sql", 1, 1)],
            ["does not match", "case-sql[0]", "no checkpoint for records[0]"],
        ),
        ([("recorder", TOPIC, 0, 1), ("recorder", TOPIC, 1, 10_000)], ["past the head"]),
    ],
)
def test_mismatches_are_refused_and_change_nothing(
    env: dict[str, str], pg_url: str, rows: list[tuple[str, str, int, int]], words: list[str]
) -> None:
    publish(env, 10)
    hq_database(pg_url, rows)
    result = cf(env, "checkpoint", "import-pillowtop", "--from", pg_url, "--pillow", "recorder")
    assert_one_line_error(result, *words)
    assert not json.loads(cf(env, "checkpoint", "history", "recorder", "--json").stdout)


def test_unusable_sources_are_one_line_errors(
    env: dict[str, str], pg_url: str, tmp_path: Path
) -> None:
    publish(env, 4)
    base = ["checkpoint", "import-pillowtop", "--pillow", "recorder", "--from"]
    # A database without HQ's table.
    assert_one_line_error(cf(env, *base, pg_url), "no table 'pillowtop_kafkacheckpoint'")
    # Nothing listening.
    unreachable = cf(env, *base, "postgresql+psycopg://nobody:secret@127.0.0.1:1/hq")
    assert_one_line_error(unreachable, "cannot read pillowtop checkpoints")
    assert "secret" not in unreachable.stderr
    # Not a URL, an unknown driver, a SQLite file that is not there, a bad table name.
    assert_one_line_error(cf(env, *base, "not a url"), "bad database URL")
    assert_one_line_error(cf(env, *base, "nosuchdb://x/y"), "bad database URL")
    assert_one_line_error(cf(env, *base, f"sqlite:///{tmp_path}/none.db"), "no SQLite file")
    assert not (tmp_path / "none.db").exists()
    assert_one_line_error(cf(env, *base, pg_url, "--table", "x; drop"), "table name")
    # An unknown pillow.
    result = cf(env, "checkpoint", "import-pillowtop", "--from", pg_url, "--pillow", "nope")
    assert_one_line_error(result)
