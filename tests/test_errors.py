"""The error queue (SQLite and PostgreSQL): storing failures, backoff with an injected clock, parking, operator actions."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from changefeed import errors
from changefeed.backoff import DEPENDENCY_BACKOFF
from changefeed.change import Change, ChangeMeta
from changefeed.errors import PARKED, PENDING, ErrorQueue, RetryPolicy
from changefeed.processors import ChangeFailure
from changefeed.testing.clock import FakeClock
from tests._cli import cf, recorder_env

POLICY = RetryPolicy(base_delay=10.0, factor=2.0, max_delay=35.0, max_attempts=4)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", "postgresql"])
def queue(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> ErrorQueue:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/state.db"
    else:
        url = request.getfixturevalue("pg_url")
    return ErrorQueue(url, POLICY, clock=clock)


def change(doc_id: str = "d1", offset: int = 0, version: int = 1) -> Change:
    return Change("form", 2, offset, ChangeMeta(doc_id, "memory", "forms", version=version))


def fail(msg: str = "boom") -> ValueError:
    try:
        raise ValueError(msg)
    except ValueError as exc:
        return exc


def test_policy_delays() -> None:
    assert [POLICY.delay(n) for n in range(1, 6)] == [10.0, 20.0, 35.0, 35.0, 35.0]
    assert [DEPENDENCY_BACKOFF.delay(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert DEPENDENCY_BACKOFF.delay(100) == 60.0


def test_add_stores_everything_needed_to_retry(queue: ErrorQueue) -> None:
    queue.add("p", change(offset=41), "indexer", fail("index down"))
    (rec,) = queue.list()
    assert (rec.pillow, rec.processor, rec.document_id) == ("p", "indexer", "d1")
    assert (rec.topic, rec.partition, rec.offset) == ("form", 2, 41)
    assert ChangeMeta.decode(rec.stub).document_id == "d1"
    assert rec.error_type == "builtins.ValueError"
    assert rec.message == "index down"
    assert "ValueError: index down" in rec.traceback and "fail" in rec.traceback
    assert rec.attempts == 1 and rec.status == PENDING
    assert rec.created_at == rec.last_attempt_at == 1000.0
    assert rec.next_attempt_at == 1010.0
    assert queue.get(rec.id) == rec
    assert queue.get(rec.id + 100) is None


def test_same_document_and_processor_updates_entry(queue: ErrorQueue, clock: FakeClock) -> None:
    queue.add("p", change(offset=1, version=1), "indexer", fail("first"))
    clock.now = 1001.0
    queue.add("p", change(offset=9, version=2), "indexer", fail("second"))
    queue.add("p", change(offset=9, version=2), "other", fail("x"))
    recs = queue.list("p")
    assert len(recs) == 2
    rec = next(r for r in recs if r.processor == "indexer")
    assert rec.attempts == 2 and rec.offset == 9 and rec.message == "second"
    assert ChangeMeta.decode(rec.stub).version == 2
    assert rec.created_at == 1000.0 and rec.last_attempt_at == 1001.0
    assert rec.next_attempt_at == 1001.0 + 20.0


def test_invalid_stub_keeps_raw_bytes_and_non_retryable_parks(queue: ErrorQueue) -> None:
    bad = Change.from_raw("meta", 0, 3, b"\x00garbage", key="k")
    queue.add("p", bad, "(invalid stub)", ValueError(bad.error), retryable=False)
    (rec,) = queue.list()
    assert rec.stub == b"\x00garbage" and rec.document_id == "k"
    assert rec.status == PARKED and rec.next_attempt_at is None


def test_invalid_stubs_are_never_merged(queue: ErrorQueue) -> None:
    """Keyless garbage records share an empty id; each keeps its own entry and bytes."""
    for offset, raw in enumerate([b"junk-1", b"junk-2"]):
        bad = Change.from_raw("meta", 0, offset, raw, key="")
        queue.add("p", bad, "(invalid stub)", ValueError(bad.error), retryable=False)
    assert sorted(r.stub for r in queue.list()) == [b"junk-1", b"junk-2"]


def test_due_respects_next_attempt(queue: ErrorQueue, clock: FakeClock) -> None:
    queue.add("p", change("a"), "proc", fail())
    clock.now = 1005.0
    queue.add("p", change("b"), "proc", fail())
    queue.add("q", change("c"), "proc", fail())
    assert queue.due("p") == []
    assert [r.document_id for r in queue.due("p", now=1010.0)] == ["a"]
    clock.now = 1020.0
    assert [r.document_id for r in queue.due("p")] == ["a", "b"]
    assert len(queue.due("p", limit=1)) == 1


def test_backoff_then_parking_at_max_attempts(queue: ErrorQueue, clock: FakeClock) -> None:
    queue.add("p", change(), "proc", fail())
    rec = queue.list()[0]
    seen = []
    while rec.status == PENDING:
        assert rec.next_attempt_at is not None
        clock.now = rec.next_attempt_at
        (rec,) = queue.due("p")
        queue.record_failure(rec, fail("again"))
        rec = queue.list()[0]
        delay = None if rec.next_attempt_at is None else rec.next_attempt_at - clock.now
        seen.append((rec.attempts, rec.status, delay))
    # max_attempts=4: attempts 2 and 3 back off (20 s, capped 35 s), the 4th parks.
    assert seen == [(2, PENDING, 20.0), (3, PENDING, 35.0), (4, PARKED, None)]
    assert rec.message == "again"
    clock.now += 10_000
    assert queue.due("p") == []
    assert queue.counts("p") == {PENDING: 0, PARKED: 1}


def test_policy_override_per_call(queue: ErrorQueue) -> None:
    queue.add("p", change(), "proc", fail(), policy=RetryPolicy(max_attempts=1))
    assert queue.list()[0].status == PARKED


def test_resolve_removes_entry(queue: ErrorQueue) -> None:
    queue.add("p", change("a"), "proc", fail())
    queue.add("p", change("b"), "proc", fail())
    queue.resolve(queue.list()[0].id)
    assert [r.document_id for r in queue.list()] == ["b"]


def test_make_due_operator_retry(queue: ErrorQueue, clock: FakeClock) -> None:
    queue.add("p", change("a"), "proc", fail(), retryable=False)
    queue.add("p", change("b"), "proc", fail())
    queue.add("q", change("c"), "proc", fail(), retryable=False)
    assert queue.make_due("p", parked_only=True) == 1
    due = queue.due("p")
    # The attempt count is kept: a manual retry that fails again counts.
    assert [(r.document_id, r.attempts, r.status) for r in due] == [("a", 1, PENDING)]
    assert queue.make_due(ids=[queue.list("q")[0].id]) == 1
    assert [r.document_id for r in queue.due("q")] == ["c"]
    assert queue.make_due() == 3
    assert len(queue.due("p")) == 2


def test_a_failure_retrying_cannot_fix_parks_at_once(queue: ErrorQueue) -> None:
    """An operator retry makes a parked entry due; failing again for a reason retrying
    cannot fix parks it again, below ``max_attempts``, instead of scheduling it."""
    queue.add("p", change("a"), "proc", fail(), retryable=False)
    queue.make_due("p")
    (rec,) = queue.due("p")
    queue.record_failure(rec, fail("refused again"), retryable=False)
    (rec,) = queue.list()
    assert (rec.status, rec.attempts, rec.next_attempt_at) == (PARKED, 2, None)
    assert rec.message == "refused again"


def test_counts_and_list_filters(queue: ErrorQueue) -> None:
    queue.add("p", change("a"), "proc", fail())
    queue.add("p", change("b"), "proc", fail(), retryable=False)
    queue.add("q", change("c"), "proc", fail())
    assert queue.counts() == {PENDING: 2, PARKED: 1}
    assert queue.counts("p") == {PENDING: 1, PARKED: 1}
    assert queue.counts("nobody") == {PENDING: 0, PARKED: 0}
    assert [r.document_id for r in queue.list(status=PARKED)] == ["b"]
    first = queue.list(limit=1)
    assert [r.document_id for r in queue.list(after_id=first[0].id)] == ["b", "c"]


def test_purge(queue: ErrorQueue, clock: FakeClock) -> None:
    queue.add("p", change("a"), "proc", fail(), retryable=False)
    clock.now = 2000.0
    queue.add("p", change("b"), "proc", fail())
    queue.add("q", change("c"), "proc", fail())
    assert queue.purge("p", status=PARKED) == 1
    assert queue.purge(older_than=500.0) == 0
    clock.now = 3000.0
    assert queue.purge("q", older_than=500.0) == 1
    assert [r.document_id for r in queue.list()] == ["b"]
    assert queue.purge(ids=[queue.list()[0].id]) == 1
    assert queue.list() == []


# -- values every database must store (issue 11, item 1) --------------------------------


@pytest.mark.parametrize(
    "doc_id",
    ["x" * 300, "a\x00b", "\ud800lone", "é" * 5000],
    ids=["300-chars", "nul", "surrogate", "long-unicode"],
)
def test_any_document_id_is_stored_and_found_again(queue: ErrorQueue, doc_id: str) -> None:
    queue.add("p", change(doc_id), "proc", fail("first"))
    queue.add("p", change(doc_id, offset=5), "proc", fail("second"))
    (rec,) = queue.list()
    assert rec.attempts == 2 and rec.message == "second"
    assert len(rec.document_id) >= len(doc_id)  # whole, escaped where needed
    assert "\x00" not in rec.document_id


def test_unstorable_text_is_escaped_and_bounded(queue: ErrorQueue) -> None:
    long_name = "report:" + "n" * 200
    queue.add("p", change(), long_name, fail("nul \x00 in message " + "m" * 100_000))
    (rec,) = queue.list()
    assert len(rec.processor) <= errors.NAME_CHARS
    assert rec.processor == errors.bounded(long_name)
    assert rec.message.startswith("nul \\x00 in message")
    assert len(rec.message) <= errors.TEXT_CHARS and len(rec.traceback) <= errors.TEXT_CHARS


def test_invalid_stub_with_long_nul_key(queue: ErrorQueue) -> None:
    bad = Change.from_raw("meta", 0, 3, b"\x00garbage", key="k\x00" * 200)
    queue.add("p", bad, "(invalid stub)", ValueError(bad.error), retryable=False)
    (rec,) = queue.list()
    assert rec.stub == b"\x00garbage" and rec.document_id.startswith("k\\x00")


def test_replayed_invalid_stub_is_not_queued_twice(queue: ErrorQueue) -> None:
    for _ in range(3):
        bad = Change.from_raw("meta", 0, 7, b"junk", key="k")
        queue.add("p", bad, "(invalid stub)", ValueError(bad.error), retryable=False)
    (rec,) = queue.list()
    assert rec.attempts == 1


def test_bounded_is_stable_and_distinct() -> None:
    a, b = "x" * 200 + "a", "x" * 200 + "b"
    assert errors.bounded(a) == errors.bounded(a) != errors.bounded(b)
    assert len(errors.bounded(a)) == errors.NAME_CHARS
    assert errors.bounded("short") == "short"


def test_ids_are_never_reused_after_purge(queue: ErrorQueue) -> None:
    queue.add("p", change("a"), "proc", fail())
    queue.add("p", change("b"), "proc", fail())
    last = max(r.id for r in queue.list())
    assert queue.purge() == 2
    queue.add("p", change("c"), "proc", fail())
    assert queue.list()[0].id > last


def test_orphaned_entries_listed_and_purged(queue: ErrorQueue) -> None:
    queue.add("p", change("a"), "proc", fail())
    queue.add("gone", change("b"), "proc", fail())
    assert queue.pillows() == {"gone": 1, "p": 1}
    assert [r.pillow for r in queue.list(not_pillows=["p"])] == ["gone"]
    assert queue.purge(not_pillows=["p"]) == 1
    assert queue.pillows() == {"p": 1}


def test_iter_all_pages(queue: ErrorQueue) -> None:
    for i in range(7):
        queue.add("p", change(f"d{i}"), "proc", fail())
    assert [r.document_id for r in queue.iter_all("p", page=3)] == [f"d{i}" for i in range(7)]


OLD_TABLE = """CREATE TABLE changefeed_errors (
    id {pk}, pillow VARCHAR(128) NOT NULL, processor VARCHAR(128) NOT NULL,
    document_id VARCHAR(255) NOT NULL, topic VARCHAR(249) NOT NULL, partition INTEGER NOT NULL,
    "offset" BIGINT NOT NULL, stub {blob} NOT NULL, error_type VARCHAR(255) NOT NULL,
    message TEXT NOT NULL, traceback TEXT NOT NULL, attempts INTEGER NOT NULL,
    status VARCHAR(16) NOT NULL, created_at FLOAT NOT NULL, last_attempt_at FLOAT NOT NULL,
    next_attempt_at FLOAT)"""


def test_migrates_an_old_state_database(queue: ErrorQueue) -> None:
    """A table made by an older changefeed (fixed-length id, no doc_key, SQLite ids that
    could be reused) is brought up to date with its entries kept and still merged."""
    postgres = queue.engine.dialect.name == "postgresql"
    with queue.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS changefeed_errors"))
        conn.execute(
            sa.text(
                OLD_TABLE.format(
                    pk="SERIAL PRIMARY KEY" if postgres else "INTEGER PRIMARY KEY",
                    blob="BYTEA" if postgres else "BLOB",
                )
            )
        )
        conn.execute(
            sa.text(
                "CREATE INDEX ix_changefeed_errors_doc ON changefeed_errors "
                "(pillow, processor, document_id)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO changefeed_errors (pillow, processor, document_id, topic, partition,"
                ' "offset", stub, error_type, message, traceback, attempts, status, created_at,'
                " last_attempt_at, next_attempt_at) VALUES ('p', 'proc', 'old', 'form', 0, 1,"
                " :stub, 'builtins.ValueError', 'm', 't', 1, 'pending', 1.0, 1.0, 2.0)"
            ),
            {"stub": change("old").metadata.encode()},  # type: ignore[union-attr]
        )
    queue.add("p", change("old"), "proc", fail("again"))
    queue.add("p", change("y" * 300), "proc", fail())
    recs = queue.list()
    assert [(r.document_id, r.attempts) for r in recs] == [("old", 2), ("y" * 300, 1)]
    if not postgres:
        queue.purge()
        queue.add("p", change("z"), "proc", fail())
        assert queue.list()[0].id > recs[-1].id


# -- the errors commands (issue 12: retry exactly what was asked, unknown names) ----------


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    return recorder_env(tmp_path, partitions=1)


def queued(cli_env: dict[str, str], pillow: str, *doc_ids: str) -> list[int]:
    queue = ErrorQueue(cli_env["CHANGEFEED_STATE"])
    for doc_id in doc_ids:
        queue.add(pillow, change(doc_id), "nope", fail(), retryable=False)
    return [r.id for r in queue.list(pillow)]


def one_line_error(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and text in result.stderr
    assert "Traceback" not in result.stderr


def test_retry_by_id_retries_only_that_entry(cli_env: dict[str, str]) -> None:
    first, second = queued(cli_env, "recorder", "a", "b")
    result = cf(cli_env, "errors", "retry", "--id", str(first))
    assert result.returncode == 0, result.stderr
    assert "1 error marked due" in result.stdout
    queue = ErrorQueue(cli_env["CHANGEFEED_STATE"])
    # "a" went through the recorder (any processor, since "nope" is not one): resolved.
    assert [r.id for r in queue.list()] == [second]
    assert queue.get(second).status == PARKED  # type: ignore[union-attr] - untouched


@pytest.mark.parametrize(
    "args, text",
    [
        (["errors", "retry", "--id", "999"], "no error #999"),
        (["errors", "retry", "--pillow", "NOSUCH"], "unknown pillow 'NOSUCH'"),
        (["errors", "list", "--pillow", "NOSUCH"], "unknown pillow 'NOSUCH'"),
        (["errors", "purge", "--pillow", "NOSUCH"], "unknown pillow 'NOSUCH'"),
    ],
)
def test_unknown_names_are_one_line_errors(
    cli_env: dict[str, str], args: list[str], text: str
) -> None:
    one_line_error(cf(cli_env, *args), text)


def test_orphaned_entries_are_shown_and_purged(cli_env: dict[str, str]) -> None:
    (orphan,) = queued(cli_env, "retired-pillow", "x")
    queued(cli_env, "recorder", "y")
    listed = cf(cli_env, "errors", "list")
    assert listed.returncode == 0, listed.stderr
    assert f"#{orphan}\tretired-pillow" in listed.stdout and "parked,orphaned" in listed.stdout
    assert "errors purge --orphaned" in listed.stderr
    as_json = json.loads(cf(cli_env, "errors", "list", "--json").stdout)
    assert [e["orphaned"] for e in as_json] == [True, False]
    one_line_error(cf(cli_env, "errors", "retry", "--id", str(orphan)), "orphaned")
    one_line_error(cf(cli_env, "errors", "retry", "--pillow", "retired-pillow"), "orphaned")
    assert cf(cli_env, "errors", "list", "--pillow", "retired-pillow").returncode == 0
    purged = cf(cli_env, "errors", "purge", "--orphaned")
    assert "1 error purged" in purged.stdout
    assert [r.pillow for r in ErrorQueue(cli_env["CHANGEFEED_STATE"]).list()] == ["recorder"]


def test_failures_go_in_as_processors_return_them(queue: ErrorQueue) -> None:
    """One type from processor to queue: a `ChangeFailure` a processor returned, named
    after it by `Failure.at`, is what `add_many` stores; a part it named keeps its name,
    and one not retryable is parked at once, in the same call."""
    returned = [
        ChangeFailure(change("a"), fail("refused"), retryable=False),
        ChangeFailure(change("b"), fail("down"), True, "report:part"),
    ]
    queue.add_many("p", [f.at("report:all") for f in returned])
    rows = [(r.document_id, r.processor, r.status, r.message) for r in queue.list()]
    assert rows == [
        ("a", "report:all", PARKED, "refused"),
        ("b", "report:part", PENDING, "down"),
    ]


def test_a_failure_not_named_is_refused(queue: ErrorQueue) -> None:
    with pytest.raises(ValueError, match="names where it failed"):
        queue.add_many("p", [ChangeFailure(change(), fail())])
    assert queue.list() == []
