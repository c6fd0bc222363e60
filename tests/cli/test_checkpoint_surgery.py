"""Checkpoint surgery (issue 13 part 5): validate, copy, merge, dump-remaining, rewinds, and
an operator's move on a running pillow that the pillow honours instead of overwriting.

The CLI runs through the real entry point in a subprocess against an app module written
into the test's directory (three pillows on one two-partition topic). The tests that touch
the log run on the embedded log and on Kafka (static striding), each on a topic of its own.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from changefeed import App, ChangeMeta
from changefeed.backends import open_backend
from changefeed.change import TopicPartition
from changefeed.checkpoints import CheckpointStore
from tests._cli import cf
from tests.doubles.processors import RecordingProcessor

ROOT = Path(__file__).resolve().parents[2]

APP_SOURCE = """
import os

from changefeed import App, NoopProcessor

TOPIC = os.environ["SURGERY_TOPIC"]

app = App()
for _name in ("alpha", "beta", "gamma"):
    app.add_pillow(_name, lambda a, n=_name: a.constructed_pillow(n, [TOPIC], NoopProcessor()))
"""


LOG_PARTITIONS = 2  # for the `log_url` fixture (tests/conftest.py)


@pytest.fixture
def embedded_log(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/log.db?partitions=2"


def make_env(tmp_path: Path, log_url: str) -> dict[str, str]:
    (tmp_path / "surgery_app.py").write_text(APP_SOURCE)
    out = {
        **os.environ,
        "SURGERY_TOPIC": f"records-{uuid.uuid4().hex[:10]}",  # the Kafka broker is shared
        "CHANGEFEED_LOG": log_url,
        "CHANGEFEED_STATE": f"sqlite:///{tmp_path}/state.db",
        "CHANGEFEED_APP": "surgery_app:app",
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT / 'src'}{os.pathsep}{ROOT}",
    }
    out.pop("CHANGEFEED_DEBUG", None)
    return out


@pytest.fixture
def env(tmp_path: Path, log_url: str) -> dict[str, str]:
    """The app's environment, on the embedded log and on Kafka."""
    return make_env(tmp_path, log_url)


@pytest.fixture
def embedded_env(tmp_path: Path, embedded_log: str) -> dict[str, str]:
    """For tests that do not read the log: the embedded log only."""
    return make_env(tmp_path, embedded_log)


@pytest.fixture
def app(env: dict[str, str]) -> Iterator[App]:
    app = App(env["CHANGEFEED_LOG"], env["CHANGEFEED_STATE"])
    yield app
    app.close()


def parts(env: dict[str, str]) -> tuple[TopicPartition, TopicPartition]:
    """The two partitions of the test's topic."""
    topic = env["SURGERY_TOPIC"]
    return TopicPartition(topic, 0), TopicPartition(topic, 1)


def publish(app: App, topic: str, n: int, start: int = 0) -> dict[TopicPartition, int]:
    with app.backend.publisher() as pub:
        pub.publish_many((topic, ChangeMeta(f"doc-{i}", "memory", "docs")) for i in range(start, n))
    feed = app.change_feed([topic])
    try:
        return feed.latest_offsets()
    finally:
        feed.close()


def test_validate_copy_merge_and_undo(env: dict[str, str], app: App) -> None:
    P0, P1 = parts(env)
    heads = publish(app, env["SURGERY_TOPIC"], 40)
    cps = app.checkpoints
    cps.set("alpha", {P0: 5, P1: 7}, reason="test")
    cps.set("beta", {P0: 9, P1: 3}, reason="test")
    cps.set("gamma", {P0: heads[P0], P1: heads[P1] + 5}, reason="test")

    r = cf(env, "checkpoint", "validate")
    assert r.returncode == 1, r.stderr
    assert "gamma" in r.stderr and "alpha" not in r.stderr
    assert f"beyond head {heads[P1]}" in r.stdout
    assert cf(env, "checkpoint", "validate", "alpha", "beta").returncode == 0

    r = cf(env, "checkpoint", "merge", "alpha", "beta", "gamma")
    assert r.returncode == 0, r.stderr
    assert cps.get("gamma") == {P0: 5, P1: 3}
    reprocessed = (heads[P0] - 5) + (heads[P1] + 5 - 3)
    assert reprocessed > 1 and f"{reprocessed} changes will be processed again" in r.stdout
    assert cps.history("gamma", limit=1)[0].kind == "merge"

    r = cf(env, "checkpoint", "copy", "beta", "alpha")
    assert r.returncode == 0, r.stderr
    assert cps.get("alpha") == {P0: 9, P1: 3}
    entries = cps.history("alpha", limit=2)
    assert {e.kind for e in entries} == {"copy"}
    for e in entries:
        assert cf(env, "checkpoint", "undo", str(e.id)).returncode == 0
    assert cps.get("alpha") == {P0: 5, P1: 7}


def test_validate_names_a_checkpoint_retention_removed(env: dict[str, str], app: App) -> None:
    """A checkpoint below the earliest offset the log still holds (retention removed changes
    the pillow never read) is named; one at the earliest is readable. Embedded log:
    ``retention_count`` and ``apply_retention``; Kafka: DeleteRecords, as retention would."""
    P0, P1 = parts(env)
    topic = env["SURGERY_TOPIC"]
    with app.backend.publisher() as pub:  # one by one: the embedded log removes whole batches
        for i in range(40):
            pub.publish(topic, ChangeMeta(f"doc-{i}", "memory", "docs"))
    if env["CHANGEFEED_LOG"].startswith("sqlite:"):
        retained = open_backend(f"{env['CHANGEFEED_LOG']}&retention_count=5")
        try:
            assert retained.apply_retention() > 0  # type: ignore[attr-defined]
        finally:
            retained.close()
    else:
        admin = app.backend.admin()
        admin.delete_records({P0: 10})  # type: ignore[attr-defined]
    feed = app.change_feed([topic])
    try:
        earliest, heads = feed.earliest_offsets(), feed.latest_offsets()
    finally:
        feed.close()
    assert earliest[P0] > 0
    app.checkpoints.set("alpha", {P0: earliest[P0] - 1, P1: heads[P1]}, reason="test")
    app.checkpoints.set("beta", {P0: earliest[P0], P1: heads[P1]}, reason="test")
    r = cf(env, "checkpoint", "validate")
    assert r.returncode == 1, r.stderr
    assert "alpha" in r.stderr and "beta" not in r.stderr
    assert f"checkpoint {earliest[P0] - 1} before earliest {earliest[P0]}" in r.stdout
    assert "beta: ok" in r.stdout


def test_merge_refuses_different_partitions_and_bad_input(env: dict[str, str], app: App) -> None:
    P0, P1 = parts(env)
    publish(app, env["SURGERY_TOPIC"], 10)
    app.checkpoints.set("alpha", {P0: 1, P1: 1}, reason="test")
    app.checkpoints.set("beta", {P0: 1}, reason="test")
    r = cf(env, "checkpoint", "merge", "alpha", "beta", "gamma")
    assert r.returncode == 2
    assert "different partitions" in r.stderr and "Traceback" not in r.stderr
    assert app.checkpoints.get("gamma") == {}
    r = cf(env, "checkpoint", "copy", "nope", "alpha")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert cf(env, "checkpoint", "merge", "alpha").returncode == 2


def test_dump_remaining(env: dict[str, str], app: App) -> None:
    P0, P1 = parts(env)
    heads = publish(app, env["SURGERY_TOPIC"], 30)
    app.checkpoints.set("alpha", {P0: heads[P0] - 2, P1: heads[P1]}, reason="test")
    r = cf(env, "checkpoint", "dump-remaining", "alpha")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["partition"], x["offset"]) for x in lines] == [
        (0, heads[P0] - 2),
        (0, heads[P0] - 1),
    ]
    assert lines[0]["stub"]["document_id"].startswith("doc-")


def test_status_flags_a_rewind(env: dict[str, str], app: App) -> None:
    P0, _ = parts(env)
    publish(app, env["SURGERY_TOPIC"], 10)
    cps = app.checkpoints
    cps.set("alpha", {P0: 4}, reason="test")
    assert cps.rewinds("alpha") == {}
    cps.commit("alpha", {P0: 6})
    assert cps.rewinds("alpha") == {}
    # A stale writer (another store, so nothing to compare with) writes an old offset.
    CheckpointStore(env["CHANGEFEED_STATE"]).commit("alpha", {P0: 2})
    assert cps.rewinds("alpha") == {P0: (4, 2)}
    r = cf(env, "status", "--json")
    assert "REWIND" in r.stdout, r.stdout + r.stderr


def wait_for(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("in_process", [False, True])
def test_reset_on_a_running_pillow_is_replayed(
    env: dict[str, str], app: App, in_process: bool
) -> None:
    """``checkpoint reset`` while the pillow runs: the pillow notices at its next commit,
    does not overwrite the operator's value and reads everything again. On Kafka the pillow
    strides statically (no consumer group): it re-assigns its consumer at the operator's
    offsets without leaving the process."""
    P0, P1 = parts(env)
    topic = env["SURGERY_TOPIC"]
    heads = publish(app, topic, 50)
    recording = RecordingProcessor(
        "Recording",
        record=lambda c: (c.partition, c.offset),
        needs_documents=False,
        hook=lambda _batch: time.sleep(0.01),  # paced, so the test acts mid-run
    )
    pillow = app.constructed_pillow("alpha", [topic], recording, batch_size=5, max_wait=0.05)
    assert not pillow.change_feed.uses_consumer_group
    thread = threading.Thread(target=pillow.run, kwargs={"forever": True}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: app.checkpoints.get("alpha") == heads)
        assert len(recording.seen) == 50
        if in_process:  # an operator's own store on the same database, no subprocess
            CheckpointStore(env["CHANGEFEED_STATE"]).set(
                "alpha", {P0: 0, P1: 0}, reason="test reset", kind="reset"
            )
        else:
            r = cf(env, "checkpoint", "reset", "alpha")
            assert r.returncode == 0, r.stderr
        publish(app, topic, 60, start=50)  # the pillow's next commit comes after the reset
        heads = publish(app, topic, 0)
        wait_for(lambda: len(recording.seen) >= 110)
        wait_for(lambda: app.checkpoints.get("alpha") == heads)
    finally:
        pillow.stop()
        thread.join(10)
        pillow.change_feed.close()
    assert not thread.is_alive()
    # Every change of the log was processed again after the reset.
    again = recording.seen[50:]
    assert {(p, o) for p, o in again} >= {
        (tp.partition, o) for tp, head in heads.items() for o in range(head)
    }
    history = app.checkpoints.history("alpha")
    assert history[0].kind == "reset"


def test_moved_compares_with_what_a_reader_wrote(embedded_env: dict[str, str]) -> None:
    env = embedded_env
    P0, P1 = parts(env)
    app = App(env["CHANGEFEED_LOG"], env["CHANGEFEED_STATE"])
    cps = app.checkpoints
    cps.commit("alpha", {P0: 3})
    assert cps.moved("alpha", {P0: 3}) == {}
    CheckpointStore(env["CHANGEFEED_STATE"]).set("alpha", {P0: 0}, reason="test", kind="reset")
    assert cps.moved("alpha", {P0: 3, P1: 0}) == {P0: 0}
    app.close()


def test_reset_on_a_running_couch_bridge_is_replayed(tmp_path: Path, couch_db: str) -> None:
    """``checkpoint reset`` of a running Couch bridge (docs/couchdb.md's way to replay a
    database): the bridge notices at its next commit and publishes everything again."""
    import httpx

    from changefeed.sources.couch_bridge import get_change_feed_pillow_for_db

    app = App(f"sqlite:///{tmp_path}/log.db", f"sqlite:///{tmp_path}/state.db")

    def stubs() -> list[str]:
        feed = app.change_feed(app.router.topics)
        try:
            since = dict.fromkeys(feed.topic_partitions(), 0)
            return [c.id for c in feed.iter_changes(since) if c is not None]
        finally:
            feed.close()

    def bulk(ids: list[str]) -> None:
        docs = [{"_id": i, "doc_type": "case"} for i in ids]
        httpx.post(f"{couch_db}/_bulk_docs", json={"docs": docs}).raise_for_status()

    bulk([f"a{i}" for i in range(5)])
    bridge = get_change_feed_pillow_for_db(app, couch_db, heartbeat=0.1, max_wait=0.05)
    thread = threading.Thread(target=bridge.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(stubs()) == 5)
        (tp,) = bridge.topic_partitions()
        wait_for(lambda: app.checkpoints.get(bridge.name).get(tp) == 5)
        CheckpointStore(f"sqlite:///{tmp_path}/state.db").set(
            bridge.name, {tp: 0}, reason="replay the database", kind="reset"
        )
        bulk(["b0"])  # the bridge's next commit comes after the reset
        wait_for(lambda: sorted(stubs()).count("a0") == 2 and "b0" in stubs())
        wait_for(lambda: app.checkpoints.get(bridge.name).get(tp) == 6)
    finally:
        bridge.stop()
        thread.join(10)
    assert not thread.is_alive()
    ids = stubs()
    assert all(ids.count(f"a{i}") == 2 for i in range(5))
    assert app.checkpoints.history(bridge.name)[0].kind == "reset"
    app.close()
