"""The fault suite (issue 11): no input stops a pillow, a bad document is never taken for an
outage, an outage is never taken for bad documents.

Real pillows on the embedded log with a memory document store; their state (checkpoints and
the error queue) on SQLite and on PostgreSQL. Sleeping is injected: a batch backoff shows
up as a recorded sleep, and "no backoff" means none was recorded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa

from changefeed.change import Change, ChangeMeta
from changefeed.errors import NAME_CHARS, PARKED, ErrorQueue, RetryPolicy
from changefeed.failures import INVALID_STUB, DependencyDownError
from changefeed.pillow import BatchPolicy, RetrySettings
from changefeed.processors import BulkProcessor, ChangeFailure
from changefeed.stores.memory import MemoryDocumentStore
from changefeed.stores.sql import SQLDocumentStore
from tests.doubles.processors import RecordingProcessor
from tests.doubles.rig import PillowRig

TOPIC = "docs"


def seen_with_attempts(change: Change) -> tuple[str, bool, int]:
    assert change.metadata is not None
    return change.id, change.deleted, change.metadata.attempts


def make_recorder(bad: Sequence[str] = ()) -> RecordingProcessor:
    """Records (id, deleted, attempts); raises ``KeyError`` for the whole bulk call when a
    bad document is in it (the pillow must then isolate), ``ConnectionError`` while
    ``down``."""
    return RecordingProcessor("recorder", record=seen_with_attempts, bad=bad)


def processed(recorder: RecordingProcessor) -> list[str]:
    """The live documents a recorder processed."""
    return [doc_id for doc_id, deleted, _ in recorder.seen if not deleted]


Env = PillowRig[MemoryDocumentStore]
"""A log, one memory document store, and state on the given database."""


def make_env(tmp_path: Path, state_url: str) -> Env:
    return PillowRig(
        tmp_path,
        "fault-pillow",
        topic=TOPIC,
        store=MemoryDocumentStore("docs"),
        state_url=state_url,
        retry_policy=RetryPolicy(base_delay=10),
        batching=BatchPolicy(500, max_wait=60.0),
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/state.db"
    else:
        url = request.getfixturevalue("pg_url")
    e = make_env(tmp_path, url)
    yield e
    e.close()


# -- item 1: inputs the error queue must store ------------------------------------------


INPUTS = {
    "not-found-300-char-id": lambda e: e.publish(ChangeMeta("m" * 300, "memory", "docs")),
    "invalid-stub-long-key": lambda e: e.raw("k" * 300, b"{not json"),
    "invalid-stub-nul-key": lambda e: e.raw("k\x00ey", b"{not json"),
    "nul-in-document-id": lambda e: e.publish(ChangeMeta("bad\x00id", "memory", "docs")),
    "nul-in-message": lambda e: e.publish(ChangeMeta("bad-msg", "memory", "docs")),
    "long-processor-name": lambda e: e.publish(ChangeMeta("bad-long", "memory", "docs")),
}


@pytest.mark.parametrize("case", list(INPUTS))
def test_unstorable_input_is_queued_and_the_pillow_goes_on(env: Env, case: str) -> None:
    env.save("before")
    INPUTS[case](env)
    env.save("after")
    failing = RecordingProcessor(  # fails every change whose id starts with "bad"
        "report:" + "x" * 200 if case == "long-processor-name" else "failing",
        needs_documents=False,
        fails_when=lambda change: change.id.startswith("bad"),
        message="refused \x00 here" if case == "nul-in-message" else "bad document",
    )
    recorder = make_recorder()
    pillow = env.pillow([recorder, failing])
    pillow.run(forever=False)
    assert env.position() == env.published  # the checkpoint moved past everything
    assert "before" in processed(recorder) and "after" in processed(recorder)
    (entry,) = env.errors.list()
    assert len(entry.processor) <= NAME_CHARS and "\x00" not in entry.message
    assert env.clock.sleeps == []
    # A second run (a restart) neither crashes nor adds the entry again.
    env.pillow([make_recorder(), failing]).run(forever=False)
    assert len(env.errors.list()) == 1


# -- items 2 and 3: bad documents are not an outage, an outage is not bad documents ------


@pytest.mark.parametrize("bad_count", [2, pytest.param(200, marks=pytest.mark.slow)])
def test_bad_documents_are_queued_alone_without_backoff(env: Env, bad_count: int) -> None:
    bad = [f"bad-{i}" for i in range(bad_count)]
    good = [f"good-{i}" for i in range(bad_count + 2)]
    for i, doc_id in enumerate(good):
        env.save(doc_id)
        if i < bad_count:
            env.save(bad[i])
    recorder = make_recorder(bad=bad)
    env.pillow(recorder).run(forever=False)
    assert env.clock.sleeps == []  # no batch backoff
    assert sorted(processed(recorder)) == sorted(good)  # in the same run
    entries = env.errors.list(limit=1000)
    assert sorted(e.document_id for e in entries) == sorted(bad)  # once each
    for entry in entries:
        assert entry.document_id in entry.message  # its own message
        assert entry.error_type == "builtins.KeyError"
    assert env.position() == env.published


def test_values_too_large_for_a_postgres_report_column_are_queued_alone(
    tmp_path: Path, pg_url: str
) -> None:
    """The case of the issue: an integer too large for a report column made every batch
    with two such documents look like an outage (same exception type for all). The bulk
    write fails as a whole with a DataError; the batch is isolated change by change, the bad
    ones are queued with their own message and the rest reach the table in the same run."""
    import sqlalchemy as sa

    from changefeed.processors.reports import ReportTableProcessor

    table = f"report_overflow_{uuid.uuid4().hex[:8]}"
    spec = {
        "name": "overflow",
        "table": table,
        "filter": {"type": "exists", "property_name": "n"},
        "columns": [{"name": "n", "type": "integer"}],
    }
    env = make_env(tmp_path, f"sqlite:///{tmp_path}/state.db")
    report = ReportTableProcessor(spec, pg_url)
    report.bootstrap()
    try:
        for i in range(4):
            env.save(f"good-{i}", {"n": i})
        env.save("bad-0", {"n": 2**70})
        env.save("bad-1", {"n": 2**71})
        env.save("good-4", {"n": 4})
        # Batches of two: the two bad documents make a batch of their own, which every
        # change of fails alike (what used to freeze the pillow for five minutes).
        env.pillow(report, batching=BatchPolicy(2, max_wait=60.0)).run(forever=False)
        assert env.clock.sleeps == []  # not taken for an outage
        entries = env.errors.list()
        assert sorted(e.document_id for e in entries) == ["bad-0", "bad-1"]
        assert all("DataError" in e.error_type or "out of range" in e.message for e in entries)
        engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT n FROM {table} ORDER BY n")).scalars().all()
        engine.dispose()
        assert rows == [0, 1, 2, 3, 4]
        assert env.position() == env.published
    finally:
        report.reset()
        report.close()
        env.close()


@pytest.mark.parametrize("batch_size", [1, 500])
def test_sink_outage_backs_off_and_loses_nothing(env: Env, batch_size: int) -> None:
    for i in range(5):
        env.save(f"doc-{i}")
    recorder = make_recorder()
    recorder.down = 3
    env.pillow(recorder, batching=BatchPolicy(batch_size, max_wait=60.0)).run(forever=False)
    assert len(env.clock.sleeps) == 3 and env.clock.sleeps == sorted(env.clock.sleeps)
    assert env.errors.list() == []
    assert sorted(processed(recorder)) == [f"doc-{i}" for i in range(5)]
    assert env.position() == 5


# -- item 5: documents that are not JSON objects -----------------------------------------


@pytest.mark.parametrize("value", [[1, 2], "text", 42])
def test_non_object_document_is_queued_with_a_reason(env: Env, value: object) -> None:
    env.save("odd")
    env.store._docs["odd"] = value  # type: ignore[assignment] - a store returning junk
    env.save("fine")
    env.store._docs["odd"] = value  # type: ignore[assignment]
    recorder = make_recorder()
    env.pillow(recorder).run(forever=False)
    (entry,) = env.errors.list()
    assert entry.document_id == "odd" and "not a JSON object" in entry.message
    assert processed(recorder) == ["fine"]
    assert env.clock.sleeps == []


# -- item 8: a late deletion for a re-created document -----------------------------------


def test_late_deletion_of_a_recreated_document_is_skipped(env: Env) -> None:
    env.save("doc")
    env.delete("doc")
    env.save("doc", {"n": 2})  # re-created: the store now holds a newer live version
    recorder = make_recorder()
    env.pillow(recorder, batching=BatchPolicy(1, max_wait=60.0)).run(forever=False)
    assert ("doc", True, 0) not in recorder.seen  # the live document was never deleted
    assert processed(recorder)[-1] == "doc"
    assert env.errors.list() == []


# -- item 9: attempts --------------------------------------------------------------------


def test_a_retried_change_carries_its_attempts(env: Env) -> None:
    env.save("bad-1")
    recorder = make_recorder(bad=["bad-1"])
    pillow = env.pillow(recorder)
    pillow.run(forever=False)
    (entry,) = env.errors.list()
    recorder.bad.clear()
    ok, failed = pillow.runner.retry_errors(ids=[entry.id])
    assert (ok, failed) == (1, 0)
    assert recorder.seen[-1][0] == "bad-1" and recorder.seen[-1][2] > 0


def test_retry_by_id_retries_exactly_that_entry_and_counts_failures(env: Env) -> None:
    for doc_id in ("bad-1", "bad-2"):
        env.save(doc_id)
    recorder = make_recorder(bad=["bad-1", "bad-2"])
    pillow = env.pillow(recorder)
    pillow.run(forever=False)
    first, second = env.errors.list()
    assert pillow.runner.retry_errors(ids=[first.id]) == (0, 1)
    assert env.errors.get(first.id).attempts == first.attempts + 1  # type: ignore[union-attr]
    assert env.errors.get(second.id).attempts == second.attempts  # type: ignore[union-attr]
    recorder.bad.clear()
    assert pillow.runner.retry_errors(ids=[second.id]) == (1, 0)
    assert [e.id for e in env.errors.list()] == [first.id]


class Refuses(BulkProcessor):
    """Refuses every document for good (like an Elasticsearch 400): not retryable."""

    name = "refuses"

    def process_changes(self, changes: Sequence[Change]) -> list[ChangeFailure]:
        return [ChangeFailure(c, ValueError("mapping conflict"), retryable=False) for c in changes]


def test_retries_by_hand_that_fail_again_leave_what_cannot_succeed_parked(env: Env) -> None:
    """Issue 20 item 5: an invalid stub and a refused document, retried by id and with the
    whole pillow made due (``errors retry``, the dashboard), stay parked."""
    env.raw("junk", b"{not json")
    env.save("refused")
    pillow = env.pillow(Refuses())
    pillow.run(forever=False)
    entries = env.errors.list()
    assert sorted(e.processor for e in entries) == sorted([INVALID_STUB, "refuses"])
    assert {e.status for e in entries} == {PARKED}
    ids = [e.id for e in entries]
    env.errors.make_due(ids=ids)
    assert pillow.runner.retry_errors(ids=ids) == (0, 2)
    env.errors.make_due("fault-pillow")
    assert pillow.runner.retry_errors(now=env.errors.clock.time()) == (0, 2)
    after = env.errors.list()
    assert [(e.status, e.attempts, e.next_attempt_at) for e in after] == [(PARKED, 3, None)] * 2


# -- item 6: a replay does not duplicate invalid stubs -----------------------------------


def test_replay_does_not_duplicate_invalid_stubs(env: Env) -> None:
    env.raw("junk-key", b"{not json")
    env.raw("", b"\xff\xfe")
    env.save("good")
    env.pillow(make_recorder()).run(forever=False)
    assert len(env.errors.list()) == 2
    env.checkpoints.set(
        "fault-pillow", {tp: 0 for tp in env.checkpoints.get("fault-pillow")}, reason="replay"
    )
    env.pillow(make_recorder()).run(forever=False)
    entries = env.errors.list()
    assert len(entries) == 2
    assert {e.processor for e in entries} == {INVALID_STUB}
    assert {e.status for e in entries} == {PARKED}


# -- the error queue's own database is down ----------------------------------------------


def test_error_queue_down_backs_off_instead_of_crashing(env: Env) -> None:
    """An error queue whose database refuses connections is a dependency outage: the
    pillow backs off (increasing waits, checkpoint kept) and stops cleanly when asked."""
    env.save("bad-1")
    env.save("good")
    dead = ErrorQueue("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    recorder = make_recorder(bad=["bad-1"])
    pillow = env.pillow(recorder, error_queue=dead, retries=RetrySettings(max_batch_retries=None))
    env.clock.on_sleep = lambda _s: pillow.stop() if len(env.clock.sleeps) == 3 else None
    pillow.run(forever=False)
    assert env.clock.sleeps == sorted(env.clock.sleeps) and len(env.clock.sleeps) == 3
    assert env.position() == 0  # nothing skipped: the batch is replayed later
    health = pillow.health()
    assert "error queue" in str(health.error)


def test_dependency_down_error_names_the_error_queue() -> None:
    exc = DependencyDownError("error queue", ConnectionRefusedError("refused"))
    assert str(exc).startswith("error queue: ConnectionRefusedError")


# -- item 7: Ctrl-C during a reindex with PostgreSQL report tables -------------------------

REINDEX_APP = '''
import os
import time

from changefeed import App, BulkProcessor
from changefeed.processors.reports import ReportTableProcessor
from changefeed.stores.sql import SQLDocumentStore

SPEC = {
    "name": "people",
    "table": "report_people",
    "filter": {"type": "exists", "property_name": "name"},
    "columns": [{"name": "name"}, {"name": "age", "type": "integer"}],
}


class Pace(BulkProcessor):
    """Marks that the reindex is under way, then paces it so a signal lands mid-run."""

    def process_changes(self, changes):
        open(os.environ["REINDEX_MARK"], "a").close()
        time.sleep(0.05)
        return []


app = App(os.environ["CHANGEFEED_LOG"], os.environ["CHANGEFEED_STATE"])
store = SQLDocumentStore(os.environ["REINDEX_PG"], "people_docs", data_source_name="people")
app.document_stores.register(store)
app.add_pillow(
    "people",
    lambda a: a.constructed_pillow(
        "people",
        ["people"],
        [ReportTableProcessor(SPEC, os.environ["REINDEX_PG"]), Pace()],
        reindex_stores=[store],
    ),
)
'''


@pytest.mark.slow
def test_ctrl_c_stops_a_postgres_reindex_and_resume_finishes_it(
    tmp_path: Path, pg_url: str
) -> None:
    store = SQLDocumentStore(pg_url, "people_docs", data_source_name="people")
    store.create()
    for i in range(3000):
        store.save(f"p{i:05d}", {"name": f"n{i}", "age": i})
    (tmp_path / "reindex_app.py").write_text(REINDEX_APP)
    mark = tmp_path / "started"
    root = Path(__file__).resolve().parents[1]
    environ = {
        **os.environ,
        "CHANGEFEED_LOG": f"sqlite:///{tmp_path}/log.db",
        "CHANGEFEED_STATE": pg_url,
        "CHANGEFEED_APP": "reindex_app:app",
        "REINDEX_PG": pg_url,
        "REINDEX_MARK": str(mark),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root / "src"), str(root)]),
    }
    environ.pop("CHANGEFEED_DEBUG", None)
    command = [sys.executable, "-m", "changefeed", "reindex", "people"]
    proc = subprocess.Popen(
        [*command, "--chunk-size", "50", "--no-progress"],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not mark.exists() and proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "stopped after" in err, err
    assert "Traceback" not in err + out
    assert len(err.strip().splitlines()) == 1
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        partial = conn.execute(sa.text("SELECT count(*) FROM report_people")).scalar_one()
    assert partial < 3000
    resumed = subprocess.run(
        [*command, "--resume", "--chunk-size", "500", "--no-progress"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stderr
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM report_people")).scalar_one() == 3000
    engine.dispose()


def test_long_report_names_give_bounded_stable_processor_names(tmp_path: Path) -> None:
    from changefeed.processors.reports import ReportTableProcessor

    spec = {
        "name": "r" * 128,
        "table": "report_long",
        "columns": [{"name": "name"}],
    }
    url = f"sqlite:///{tmp_path}/reports.db"
    one, two = ReportTableProcessor(spec, url), ReportTableProcessor(spec, url)
    assert len(one.name) <= NAME_CHARS and one.name == two.name
    assert one.name.startswith("report:rrr")
