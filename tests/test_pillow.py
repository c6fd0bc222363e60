"""The pillow runtime: batching, dedupe, bulk fetch, checkpoints, failures, stopping, striding.

Most tests run on the real embedded log in a temp dir; a scripted in-memory feed is used
where the test needs exact control over when changes and idle sentinels arrive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from changefeed.backends.local import SQLiteLog
from changefeed.change import Change, ChangeMeta, TopicPartition
from changefeed.checkpoints import CheckpointStore
from changefeed.errors import FETCH, INVALID_STUB, PARKED, PENDING, RetryPolicy
from changefeed.pillow import (
    BatchPolicy,
    BatchReport,
    DependencyDownError,
    Pillow,
    PillowListener,
    RetrySettings,
    stride,
)
from changefeed.processors import FunctionProcessor
from changefeed.stores import MemoryDocumentStore
from changefeed.stores.base import Fetched
from tests.doubles.feeds import TOPIC, ScriptedFeed, ScriptItem, stub_change
from tests.doubles.processors import RecordingProcessor
from tests.doubles.rig import PillowRig

ROOT = Path(__file__).resolve().parent.parent


# -- helpers ------------------------------------------------------------------------------


class CountingStore(MemoryDocumentStore):
    """A memory store that counts bulk fetches and can serve stale versions on demand."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.fetches: list[list[str]] = []
        self.stale_for: dict[str, int] = {}  # doc id → how many more fetches serve old data
        self.old: dict[str, dict[str, Any]] = {}
        self.down = False

    def get_documents(self, doc_ids: Iterable[str]) -> dict[str, Fetched]:
        ids = list(doc_ids)
        self.fetches.append(ids)
        if self.down:
            raise ConnectionError("store is down")
        found = super().get_documents(ids)
        for doc_id in ids:
            if self.stale_for.get(doc_id, 0) > 0:
                self.stale_for[doc_id] -= 1
                found[doc_id] = dict(self.old[doc_id])
        return found


class Crash(BaseException):
    """Stands in for the process dying: not an Exception, so nothing may swallow it."""


class Reports(PillowListener):
    def __init__(self) -> None:
        self.batches: list[BatchReport] = []
        self.down: list[float] = []

    def on_batch(self, pillow: Pillow, report: BatchReport) -> None:
        self.batches.append(report)

    def on_dependency_down(self, pillow: Pillow, error: DependencyDownError, delay: float) -> None:
        self.down.append(delay)


Env = PillowRig[CountingStore]
"""A log, a state database and a counting document store in a temp dir."""


def make_env(tmp_path: Path, partitions: int = 1) -> Env:
    return PillowRig(
        tmp_path,
        partitions=partitions,
        store=CountingStore("docs"),
        retry_policy=RetryPolicy(base_delay=10, max_attempts=3),
        batching=BatchPolicy(100, max_wait=5.0),
    )


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = make_env(tmp_path)
    yield e
    e.close()


def collector(name: str = "collect", needs_documents: bool = True) -> RecordingProcessor:
    """Records (id, document) per batch; fails ids put in its ``fail``."""

    def record(change: Change) -> tuple[str, dict[str, Any] | None]:
        return change.id, change.document if needs_documents else None

    return RecordingProcessor(name, record=record, needs_documents=needs_documents)


def crash_at(batch: int) -> Callable[[int], None]:
    """A hook that kills the process (`Crash`) when batch number ``batch`` starts."""

    def hook(n: int) -> None:
        if n == batch:
            raise Crash("process killed mid-batch")

    return hook


# -- batching -----------------------------------------------------------------------------


def test_batches_by_size(env: Env) -> None:
    for i in range(25):
        env.save(f"d{i}", {"i": i})
    proc = collector()
    pillow = env.pillow(proc, batching=BatchPolicy(10, max_wait=5.0))
    reports = Reports()
    pillow.listeners.append(reports)
    assert pillow.run(forever=False) == 25
    assert [len(b) for b in proc.batches] == [10, 10, 5]
    assert [r.changes for r in reports.batches] == [10, 10, 5]
    assert [r.checkpoint for r in reports.batches] == [
        {TopicPartition(TOPIC, 0): n} for n in (10, 20, 25)
    ]
    assert env.checkpoint() == {TopicPartition(TOPIC, 0): 25}
    assert proc.batches[0][3] == ("d3", {"_id": "d3", "_version": 1, "i": 3})


def test_partial_batch_flushes_after_max_wait(tmp_path: Path) -> None:
    proc = collector(needs_documents=False)
    # d0 arrives, then nothing for longer than max_wait; d1 arrives and the batch is due.
    feed = ScriptedFeed([stub_change(0), 0.3, stub_change(1), stub_change(2)])
    pillow = Pillow(
        "p",
        feed,
        proc,
        checkpoints=CheckpointStore(f"sqlite:///{tmp_path}/s.db"),
        batching=BatchPolicy(100, max_wait=0.1),
        clock=feed.clock,
    )
    pillow.run(forever=True)
    assert [[i for i, _ in b] for b in proc.batches] == [["d0", "d1"], ["d2"]]


def test_idle_sentinel_flushes_partial_batch(tmp_path: Path) -> None:
    proc = collector(needs_documents=False)
    checkpoints = CheckpointStore(f"sqlite:///{tmp_path}/s.db")
    feed = ScriptedFeed([stub_change(0), stub_change(1), None, None, stub_change(2)])
    pillow = Pillow(
        "p", feed, proc, checkpoints=checkpoints, batching=BatchPolicy(100, max_wait=60)
    )
    pillow.run(forever=True)
    assert [[i for i, _ in b] for b in proc.batches] == [["d0", "d1"], ["d2"]]
    assert checkpoints.get("p") == {TopicPartition(TOPIC, 0): 3}


def test_dedupe_keeps_last_change_per_document(env: Env) -> None:
    env.save("a", {"n": 1})
    env.save("b", {"n": 1})
    env.save("a", {"n": 2})
    env.save("c", {"n": 1})
    env.delete("a")
    env.save("b", {"n": 2})
    proc = collector()
    seen_versions: list[tuple[str, int | None]] = []
    spy = FunctionProcessor(
        lambda c: seen_versions.append((c.id, c.metadata.version if c.metadata else None)),
        name="spy",
    )
    env.pillow([proc, spy]).run(forever=False)
    # One batch, one change per document (the last); order across documents is not promised.
    (batch,) = proc.batches
    assert sorted(batch, key=lambda item: item[0]) == [
        ("a", None),
        ("b", {"_id": "b", "_version": 2, "n": 2}),
        ("c", {"_id": "c", "_version": 1, "n": 1}),
    ]
    assert sorted(seen_versions) == [("a", 3), ("b", 2), ("c", 1)]
    assert env.checkpoint() == {TopicPartition(TOPIC, 0): 6}


def test_dedupe_keeps_a_newer_change_over_a_late_stub_of_its_document(env: Env) -> None:
    """An update (version 3) then a late deletion (version 2) in one batch, the store still
    at version 1: processed in order, the update is a stale read (queued, retried later),
    and so it is when deduplicated. The late deletion does not take its place (it would be
    applied, being newer than the store, and the update would be lost)."""
    env.store.save("a", {"n": 1})
    env.publisher.publish(TOPIC, ChangeMeta("a", "memory", "docs", version=3))
    env.publisher.publish(TOPIC, ChangeMeta("a", "memory", "docs", version=2, is_deletion=True))
    env.publisher.publish(TOPIC, ChangeMeta("b", "memory", "docs"))  # versionless: the last
    env.publisher.publish(TOPIC, ChangeMeta("b", "memory", "docs", is_deletion=True))
    proc = collector()
    env.pillow(proc).run(forever=False)
    assert proc.batches == [[("b", None)]]  # b: unknown to the store, its deletion stands
    (entry,) = env.errors.list()
    assert (entry.document_id, entry.processor) == ("a", FETCH)
    assert "older than its change (version=3" in entry.message


def test_dedupe_tells_stores_apart(env: Env) -> None:
    """The same id in two stores is two documents: both changes are processed."""
    env.stores.register(MemoryDocumentStore("docs", data_source_type="sql"))
    env.save("same-id", {"from": "memory"})
    sql_store = env.stores.get("sql", "docs")
    assert isinstance(sql_store, MemoryDocumentStore)
    version = sql_store.save("same-id", {"from": "sql"})
    env.publisher.publish(TOPIC, ChangeMeta("same-id", "sql", "docs", version=version))
    proc = collector()
    env.pillow(proc).run(forever=False)
    assert sorted(doc["from"] for _, doc in proc.batches[0] if doc) == ["memory", "sql"]


def test_documents_fetched_once_per_store_for_all_processors(env: Env) -> None:
    other = env.stores.register(CountingStore("other"))
    assert isinstance(other, CountingStore)
    for i in range(6):
        env.save(f"d{i}", {"i": i})
        env.save(f"o{i}", {"i": i}, store="other")
    env.delete("gone")
    bulk = collector("bulk")
    per_change: list[tuple[str, Any]] = []
    single = FunctionProcessor(lambda c: per_change.append((c.id, c.document)), name="single")
    stubs_only = collector("stubs", needs_documents=False)
    env.pillow([bulk, single, stubs_only]).run(forever=False)
    # One bulk call per store; the deletion's stub is checked in it too (a late deletion of
    # a re-created document must not be applied).
    assert len(env.store.fetches) == 1
    assert sorted(env.store.fetches[0]) == sorted([f"d{i}" for i in range(6)] + ["gone"])
    assert len(other.fetches) == 1 and len(other.fetches[0]) == 6
    assert len(bulk.ids) == len(per_change) == len(stubs_only.ids) == 13
    assert dict(per_change)["o4"] == {"_id": "o4", "_version": 1, "i": 4}
    assert dict(per_change)["gone"] is None


def test_no_fetch_when_no_processor_needs_documents(env: Env) -> None:
    env.save("a", {"n": 1})
    proc = collector(needs_documents=False)
    env.pillow(proc).run(forever=False)
    assert env.store.fetches == [] and proc.ids == ["a"]


# -- checkpoints and crashes ------------------------------------------------------------------


def test_checkpoint_only_after_every_processor_finished(env: Env) -> None:
    for i in range(25):
        env.save(f"d{i}", {"i": i})
    first, second = collector("first"), collector("second")
    second.hook = crash_at(2)
    pillow = env.pillow([first, second], batching=BatchPolicy(10, max_wait=5.0))
    with pytest.raises(Crash):
        pillow.run(forever=False)
    # The first processor finished batch 2, the second died in it: checkpoint at batch 1.
    assert len(first.batches) == 2 and len(second.batches) == 1
    assert env.checkpoint() == {TopicPartition(TOPIC, 0): 10}
    # A restart replays batch 2 and goes on.
    again = collector("second")
    env.pillow([collector("first"), again], batching=BatchPolicy(10, max_wait=5.0)).run(
        forever=False
    )
    assert again.ids == [f"d{i}" for i in range(10, 25)]
    assert env.checkpoint() == {TopicPartition(TOPIC, 0): 25}


def test_checkpoints_resume_and_per_partition(tmp_path: Path) -> None:
    env = make_env(tmp_path, partitions=3)
    for i in range(30):
        env.save(f"d{i}", {"i": i})
    env.pillow(collector()).run(forever=False)
    heads = env.log.change_feed([TOPIC]).latest_offsets()
    assert env.checkpoint() == heads and len(heads) == 3
    env.save("late", {"n": 1})
    proc = collector()
    env.pillow(proc).run(forever=False)
    assert proc.ids == ["late"]


# -- stale reads ----------------------------------------------------------------------------


def test_stale_read_is_retried_and_never_processed_with_old_data(env: Env) -> None:
    env.save("a", {"n": 1})
    env.store.old["a"] = env.store.get_documents(["a"])["a"]  # type: ignore[assignment]
    env.save("a", {"n": 2})  # stub says version 2
    env.save("b", {"n": 1})
    env.store.stale_for["a"] = 1  # the first fetch returns version 1 (a lagging replica)
    proc = collector()
    env.store.fetches.clear()
    env.pillow(proc).run(forever=False)
    processed_a = [doc for batch in proc.batches for doc_id, doc in batch if doc_id == "a"]
    assert processed_a == [{"_id": "a", "_version": 2, "n": 2}]  # never version 1
    assert sorted(proc.ids) == ["a", "b"]
    assert env.store.fetches[1:] == [["a"]]  # only the stale document is read again
    assert env.clock.sleeps == [0.05]  # one re-read, after the injected sleep
    assert env.errors.list() == []


def test_persistent_stale_read_goes_to_error_queue(env: Env) -> None:
    env.save("a", {"n": 1})
    env.store.old["a"] = env.store.get_documents(["a"])["a"]  # type: ignore[assignment]
    env.save("a", {"n": 2})
    env.save("b", {"n": 1})
    env.store.stale_for["a"] = 100
    proc = collector()
    env.pillow(proc).run(forever=False)
    assert proc.ids == ["b"]
    (err,) = env.errors.list()
    assert (err.document_id, err.processor) == ("a", FETCH)
    assert err.error_type.endswith("StaleReadError") and "older than its change" in err.message
    assert env.checkpoint() == {TopicPartition(TOPIC, 0): 3}


# -- failures -------------------------------------------------------------------------------


def test_failing_change_goes_to_queue_while_others_proceed(env: Env) -> None:
    for doc_id in ("a", "bad", "c"):
        env.save(doc_id, {"x": 1})
    proc = collector("indexer")
    proc.fail = {"bad"}
    per_change_fail = FunctionProcessor(
        lambda c: (_ for _ in ()).throw(KeyError("nope")) if c.id == "c" else None, name="cache"
    )
    env.pillow([proc, per_change_fail]).run(forever=False)
    assert proc.ids == ["a", "c"]
    errors = {(e.document_id, e.processor): e for e in env.errors.list()}
    assert set(errors) == {("bad", "indexer"), ("c", "cache")}
    assert errors[("bad", "indexer")].message == "cannot handle bad"
    assert errors[("c", "cache")].error_type == "builtins.KeyError"
    assert errors[("bad", "indexer")].offset == 1 and errors[("bad", "indexer")].status == PENDING
    assert env.checkpoint() == {TopicPartition(TOPIC, 0): 3}


def test_whole_batch_failing_backs_off_and_retries(env: Env) -> None:
    for i in range(5):
        env.save(f"d{i}", {"i": i})
    calls = []

    def flaky(change: Change) -> None:
        calls.append(change.id)
        if len(calls) <= 10:  # the first two passes over the batch: the dependency is down
            raise ConnectionError("search cluster unreachable")

    reports = Reports()
    pillow = env.pillow(FunctionProcessor(flaky, name="search"))
    pillow.listeners.append(reports)
    pillow.run(forever=False)
    assert env.clock.sleeps == [1.0, 2.0]  # exponential backoff, injected sleep
    assert reports.down == [1.0, 2.0]
    assert reports.batches[0].retries == 2
    assert calls[-5:] == [f"d{i}" for i in range(5)]
    assert env.errors.list() == []  # nothing parked or queued
    assert env.checkpoint() == {TopicPartition(TOPIC, 0): 5}


def test_store_down_backs_off_then_queues_after_max_batch_retries(env: Env) -> None:
    for i in range(3):
        env.save(f"d{i}", {"i": i})
    env.store.down = True
    proc = collector()
    env.pillow(proc, retries=RetrySettings(max_batch_retries=2)).run(forever=False)
    assert env.clock.sleeps == [1.0, 2.0]
    assert proc.ids == []
    errors = env.errors.list()
    assert sorted(e.document_id for e in errors) == ["d0", "d1", "d2"]
    assert all("store is down" in e.message and e.status == PENDING for e in errors)
    assert env.checkpoint() == {TopicPartition(TOPIC, 0): 3}


def test_stop_during_backoff_leaves_batch_for_replay(env: Env) -> None:
    env.save("a", {"n": 1})
    env.save("b", {"n": 1})

    def unreachable(change: Change) -> None:
        raise ConnectionError("sink unreachable")

    pillow = env.pillow(FunctionProcessor(unreachable, name="broken"))
    # An operator stops the pillow while it waits for the dependency to come back.
    env.clock.on_sleep = lambda _s: pillow.stop()
    pillow.run(forever=False)
    assert env.checkpoint() == {}
    assert env.errors.list() == []


def test_bad_stubs_go_to_queue_and_pillow_continues(env: Env) -> None:
    env.save("good1", {"n": 1})
    env.publisher.append_raw([(TOPIC, "k-json", b"{oops")])
    env.publisher.append_raw([(TOPIC, "k-fields", b'{"document_id": "x", "v": 1}')])
    env.publisher.publish(TOPIC, ChangeMeta("orphan", "memory", "nowhere"))
    env.save("good2", {"n": 1})
    proc = collector()
    env.pillow(proc).run(forever=False)
    assert proc.ids == ["good1", "good2"]
    errors = {e.document_id: e for e in env.errors.list()}
    assert set(errors) == {"k-json", "k-fields", "orphan"}
    assert (
        errors["k-json"].processor == INVALID_STUB and "not valid JSON" in errors["k-json"].message
    )
    assert errors["k-json"].stub == b"{oops" and errors["k-json"].status == PARKED
    assert "data_source_type" in errors["k-fields"].message
    assert errors["orphan"].processor == FETCH
    assert (
        "no document store" in errors["orphan"].message and "'nowhere'" in errors["orphan"].message
    )
    assert env.checkpoint() == {TopicPartition(TOPIC, 0): 5}


def test_retry_errors_backoff_then_park_then_operator_retry(env: Env) -> None:
    env.save("a", {"n": 1})
    env.save("bad", {"n": 1})
    proc = collector()
    proc.fail = {"bad"}
    pillow = env.pillow(proc)
    pillow.run(forever=False)
    (err,) = env.errors.list()
    assert (err.attempts, err.next_attempt_at) == (1, 1010.0)
    assert pillow.retry_errors() == (0, 0)  # not due yet
    env.clock.now = 1010.0
    assert pillow.retry_errors() == (0, 1)
    (err,) = env.errors.list()
    assert (err.attempts, err.status, err.next_attempt_at) == (2, PENDING, 1030.0)
    env.clock.now = 1030.0
    assert pillow.retry_errors() == (0, 1)
    (err,) = env.errors.list()
    assert (err.attempts, err.status) == (3, PARKED)  # max_attempts=3
    env.clock.now = 99999.0
    assert pillow.retry_errors() == (0, 0)
    # The operator fixes the cause and retries parked changes: processed with current data.
    env.store.save("bad", {"n": 2})
    proc.fail.clear()
    assert env.errors.make_due("test-pillow", parked_only=True) == 1
    assert pillow.retry_errors() == (1, 0)
    assert proc.batches[-1] == [("bad", {"_id": "bad", "_version": 2, "n": 2})]
    assert env.errors.list() == []


def test_retry_of_invalid_stub_stays_failed(env: Env) -> None:
    env.publisher.append_raw([(TOPIC, "k", b"nope")])
    pillow = env.pillow(collector())
    pillow.run(forever=False)
    env.errors.make_due()
    assert pillow.retry_errors() == (0, 1)
    (err,) = env.errors.list()
    # make_due keeps the count: the failed retry is the second attempt.
    assert err.attempts == 2 and "not valid JSON" in err.message


# -- stopping ---------------------------------------------------------------------------------


def test_stop_from_another_thread_after_current_batch(env: Env) -> None:
    for i in range(30):
        env.save(f"d{i}", {"i": i})
    started, go = threading.Event(), threading.Event()

    def block(n: int) -> None:
        started.set()
        assert go.wait(10)

    proc = collector()
    proc.hook = block
    pillow = env.pillow(proc, batching=BatchPolicy(10, max_wait=5.0))
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(pillow.run(forever=True)))
    thread.start()
    assert started.wait(10)
    pillow.stop()
    go.set()
    thread.join(10)
    assert not thread.is_alive()
    assert [len(b) for b in proc.batches] == [10]
    assert env.checkpoint() == {TopicPartition(TOPIC, 0): 10}


class GroupFeed(ScriptedFeed):
    """A scripted feed in a consumer group: records its rebalance listener and whether, and
    with which listener still set, the pillow left the group."""

    def __init__(self, script: Sequence[ScriptItem]) -> None:
        super().__init__(script, grouped=True)
        self.listener: object = None
        self.left_with: list[object] = []

    def set_rebalance_listener(self, listener: object) -> None:
        self.listener = listener

    def leave_group(self) -> None:
        self.left_with.append(self.listener)


@pytest.mark.parametrize("ending", ["caught-up", "stopped", "crashed"])
def test_a_group_pillow_leaves_its_group_however_it_stops(tmp_path: Path, ending: str) -> None:
    """Returning, being stopped and an exception all leave the group once, with the
    listener detached first: leaving must not process the unfinished batch."""
    feed = GroupFeed([stub_change(0), stub_change(1), None, stub_change(2), None])
    proc = collector(needs_documents=False)
    pillow = Pillow(
        "p",
        feed,
        proc,
        checkpoints=CheckpointStore(f"sqlite:///{tmp_path}/s.db"),
        batching=BatchPolicy(2, max_wait=60),
    )
    if ending == "stopped":
        pillow.listeners.append(
            type("StopAfterFirst", (PillowListener,), {"on_batch": lambda self, p, r: p.stop()})()
        )
    if ending == "crashed":
        proc.hook = crash_at(1)
        with pytest.raises(Crash):
            pillow.run(forever=True)
    else:
        pillow.run(forever=ending == "stopped")
    assert feed.left_with == [None]
    batches = {"caught-up": 2, "stopped": 1, "crashed": 0}[ending]
    assert len(proc.batches) == batches


def test_stop_while_idle(env: Env) -> None:
    env.save("a", {"n": 1})
    proc = collector()
    pillow = env.pillow(proc)
    pillow.listeners.append(
        type(
            "StopAfterFirst",
            (PillowListener,),
            {
                "on_batch": lambda self, p, r: p.stop(),
            },
        )()
    )
    thread = threading.Thread(target=pillow.run)
    thread.start()
    thread.join(10)
    alive = thread.is_alive()
    pillow.stop()
    thread.join(10)
    assert not alive and proc.ids == ["a"]


def test_topic_created_after_start_is_read(tmp_path: Path) -> None:
    log = SQLiteLog(tmp_path / "log.db")
    proc = collector(needs_documents=False)
    pillow = Pillow(
        "p",
        log.change_feed(["late"], idle_timeout=0.05),
        proc,
        checkpoints=CheckpointStore(f"sqlite:///{tmp_path}/s.db"),
        batching=BatchPolicy(max_wait=0.05),
    )
    pillow.partition_check_interval = 0.05
    pillow.listeners.append(
        type("StopAfterFirst", (PillowListener,), {"on_batch": lambda self, p, r: p.stop()})()
    )
    thread = threading.Thread(target=pillow.run)
    thread.start()
    time.sleep(0.2)  # the pillow is running, its topic does not exist yet
    with log.publisher() as pub:
        pub.publish("late", ChangeMeta("x", "memory", "docs"))
    thread.join(20)
    alive = thread.is_alive()
    pillow.stop()  # never leave a pillow thread behind, even when the test fails
    thread.join(10)
    assert not alive and proc.ids == ["x"]


def _cli(env_vars: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.apps.recorder", *args],
        cwd=ROOT,
        env={**os.environ, **env_vars},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _app_env(tmp_path: Path, out: Path, **extra: str) -> dict[str, str]:
    return {
        "CHANGEFEED_LOG": f"sqlite:///{tmp_path}/log.db",
        "CHANGEFEED_STATE": f"sqlite:///{tmp_path}/state.db",
        "RECORDER_OUT": str(out),
        **extra,
    }


def _lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def test_sigterm_stops_after_current_batch(tmp_path: Path) -> None:
    log = SQLiteLog(tmp_path / "log.db")
    with log.publisher() as pub:
        pub.publish_many(("records", ChangeMeta(f"d{i}", "memory", "docs")) for i in range(60))
    out = tmp_path / "out.txt"
    proc = _cli(
        _app_env(tmp_path, out, RECORDER_BATCH="10", RECORDER_DELAY="0.2"), "run", "recorder"
    )
    deadline = time.monotonic() + 30
    while not _lines(out) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr.decode()
    recorded = _lines(out)
    assert 10 <= len(recorded) < 60 and len(recorded) % 10 == 0
    # Stopped at a batch boundary: everything recorded is checkpointed, nothing more.
    checkpoints = CheckpointStore(f"sqlite:///{tmp_path}/state.db").get("recorder")
    assert checkpoints == {TopicPartition("records", 0): len(recorded)}


# -- striding ---------------------------------------------------------------------------------


def test_stride_is_static_and_disjoint() -> None:
    tps = [TopicPartition(t, p) for t in ("b", "a") for p in range(3)]
    assert stride(tps, 2, 0) == [("a", 0), ("a", 2), ("b", 1)]
    assert stride(tps, 2, 1) == [("a", 1), ("b", 0), ("b", 2)]
    assert stride(tps, 1, 0) == sorted(tps)
    assert stride(tps, 8, 7) == []
    with pytest.raises(ValueError):
        stride(tps, 2, 2)
    with pytest.raises(ValueError):
        stride(tps, 0, 0)


def test_two_processes_split_partitions_exactly_once(tmp_path: Path) -> None:
    log = SQLiteLog(tmp_path / "log.db")
    admin = log.admin()
    admin.create_topic("records", 3)
    admin.create_topic("more", 2)
    items = [
        ("records" if i % 2 else "more", ChangeMeta(f"d{i}", "memory", "docs")) for i in range(200)
    ]
    with log.publisher() as pub:
        pub.publish_many(items)
    outs = [tmp_path / f"out{k}.txt" for k in range(2)]
    procs = [
        _cli(
            _app_env(tmp_path, outs[k], RECORDER_TOPICS="records,more"),
            "run",
            "recorder",
            "--once",
            "--num-processes",
            "2",
            "--process-number",
            str(k),
        )
        for k in range(2)
    ]
    for p in procs:
        _, stderr = p.communicate(timeout=60)
        assert p.returncode == 0, stderr.decode()
    got = [_lines(o) for o in outs]
    partitions = [{(t, int(p)) for t, p, _, _ in lines} for lines in got]
    assert partitions[0] == {("more", 0), ("records", 0), ("records", 2)}
    assert partitions[1] == {("more", 1), ("records", 1)}
    ids = [doc_id for lines in got for *_, doc_id in lines]
    assert sorted(ids) == sorted(m.document_id for _, m in items)
    checkpoints = CheckpointStore(f"sqlite:///{tmp_path}/state.db").get("recorder")
    assert checkpoints == log.change_feed(["records", "more"]).latest_offsets()
