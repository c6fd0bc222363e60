"""The run loop the relays share, and the outbox relay registered with an app like a pillow."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from changefeed.app import App
from changefeed.backends.base import PublishError
from changefeed.backoff import Backoff
from changefeed.change import ChangeMeta
from changefeed.runner import Runnable, run_runnable
from changefeed.sources.outbox import Outbox, OutboxRelay, add_outbox_relay, write_change
from changefeed.sources.relay import Relay, RelayBatch
from tests.harness._util import wait_until
from tests.sources._log import ids_in_log


class RecordingBackoff(Backoff):
    """The one policy, with tiny waits, remembering which delays the loop asked for."""

    def __init__(self) -> None:
        super().__init__(base=0.001, factor=2.0, cap=0.004)
        object.__setattr__(self, "asked", [])

    def delay(self, attempt: int) -> float:
        self.asked.append(attempt)  # type: ignore[attr-defined]
        return super().delay(attempt)


class ScriptedRelay(Relay):
    """A relay whose batches are given in advance: a `RelayBatch` or an exception to raise.
    It stops itself when the script is done."""

    kind = "scripted"

    def __init__(self, script: list[RelayBatch | Exception], **kw: object) -> None:
        super().__init__("scripted", poll_interval=0, **kw)  # type: ignore[arg-type]
        self.script = list(script)
        self.resets = 0
        self.closed = 0
        self.states: list[str] = []

    def relay_batch(self, forever: bool) -> RelayBatch:
        self.states.append(self.health().state)
        step = self.script.pop(0)
        if not self.script:
            self.stop()
        if isinstance(step, Exception):
            raise step
        self.count_batch(step.published)
        return step

    def retryable(self, exc: Exception) -> bool:
        return not isinstance(exc, LookupError)

    def reset(self) -> None:
        self.resets += 1

    def close(self) -> None:
        self.closed += 1


def test_loop_backs_off_after_a_publish_failure_and_continues() -> None:
    backoff = RecordingBackoff()
    relay = ScriptedRelay(
        [
            RelayBatch(3, 3, drained=False),
            PublishError("log unavailable"),
            PublishError("log unavailable"),
            RelayBatch(2, 2, drained=False),
            PublishError("log unavailable"),
            RelayBatch(1, 1, drained=True),
        ],
        backoff=backoff,
    )
    assert isinstance(relay, Runnable) and relay.scalable is False
    assert relay.run(forever=True) == 6
    # Doubling from the first failure, and from 1 again after a batch went through.
    assert backoff.asked == [1, 2, 1]  # type: ignore[attr-defined]
    assert relay.resets == 3 and relay.closed == 1
    assert relay.states[:4] == ["running", "running", "backing-off", "backing-off"]
    health = relay.health()
    assert (health.state, health.processed, health.error) == ("stopped", 6, None)
    assert health.detail["batches"] == 3 and health.last_progress_at is not None


def test_loop_raises_what_retrying_cannot_fix_and_fails_fast_when_not_forever() -> None:
    relay = ScriptedRelay([RelayBatch(1, 1, False), LookupError("gone"), RelayBatch(1, 1, True)])
    with pytest.raises(LookupError):
        relay.run(forever=True)
    assert relay.health().error == "LookupError: gone" and relay.closed == 1
    once = ScriptedRelay([PublishError("down"), RelayBatch(1, 1, True)])
    with pytest.raises(PublishError):
        once.run(forever=False)
    bounded = ScriptedRelay(
        [PublishError("down")] * 3 + [RelayBatch(1, 1, True)],
        backoff=Backoff(base=0.001, cap=0.001, retries=1),
    )
    with pytest.raises(PublishError):
        bounded.run(forever=True)  # the policy's retries bound the loop too
    with pytest.raises(ValueError, match="one process"):
        ScriptedRelay([]).run(num_processes=2)


def test_drained_source_stops_a_run_once_and_waits_when_forever() -> None:
    relay = ScriptedRelay([RelayBatch(5, 5, False), RelayBatch(0, 0, True), RelayBatch(9, 9, True)])
    assert relay.run(forever=False) == 5
    assert len(relay.script) == 1  # stopped at the first drained batch


# -- the outbox relay as a registered runnable ---------------------------------------------


def stub(doc_id: str) -> ChangeMeta:
    return ChangeMeta(doc_id, "sql", "patients", document_type="case")


@pytest.fixture
def outbox_db(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    Outbox().create(engine)
    yield engine
    engine.dispose()


def test_outbox_relay_registered_with_the_helper_runs_through_get_runnable(
    app: App, outbox_db: sa.Engine
) -> None:
    assert add_outbox_relay(app, "outbox", outbox_db, batch_size=2) == "outbox"
    assert "outbox" in app.runnable_names and "outbox" not in app.pillow_names
    with outbox_db.begin() as conn:
        for i in range(5):
            write_change(conn, stub(f"c{i}"))
    relay = app.get_runnable("outbox")
    assert isinstance(relay, OutboxRelay) and relay.router is app.router
    assert run_runnable(relay, forever=False) == 5
    assert ids_in_log(app.backend) == [f"c{i}" for i in range(5)]  # type: ignore[arg-type]
    health = relay.health()
    assert (health.kind, health.state, health.processed) == ("outbox-relay", "stopped", 5)
    assert health.detail["batches"] == 3 and health.detail["outbox"] == "changefeed_outbox"
    assert relay.status().pending == 0
    with pytest.raises(ValueError, match="one process"):
        run_runnable(app.get_runnable("outbox"), num_processes=2)


class FlakyPublisher:
    """The app's publisher, whose log refuses the first ``failures`` flushes."""

    def __init__(self, app: App, failures: int) -> None:
        self.inner = app.backend.publisher()
        self.failures = failures

    def publish_many(self, items: object) -> None:
        self.inner.publish_many(items)  # type: ignore[arg-type]

    def flush(self, timeout: float | None = None) -> None:
        if self.failures:
            self.failures -= 1
            raise PublishError("log unavailable")
        self.inner.flush(timeout)


def test_outbox_relay_backs_off_while_the_log_is_down_and_loses_nothing(
    app: App, outbox_db: sa.Engine
) -> None:
    publisher = FlakyPublisher(app, failures=2)
    backoff = RecordingBackoff()
    relay = OutboxRelay(outbox_db, publisher, backoff=backoff, poll_interval=0.01)  # type: ignore[arg-type]
    with outbox_db.begin() as conn:
        write_change(conn, stub("a"))
    thread = threading.Thread(target=relay.run)
    thread.start()
    try:
        wait_until(lambda: "a" in ids_in_log(app.backend), "the stub in the log", timeout=20)  # type: ignore[arg-type]
        with outbox_db.begin() as conn:
            write_change(conn, stub("b"))
        wait_until(lambda: relay.health().processed == 2, "the second stub relayed", timeout=20)
    finally:
        relay.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert backoff.asked == [1, 2]  # type: ignore[attr-defined]
    # Published again after each failed flush (at least once), relayed until acknowledged.
    assert set(ids_in_log(app.backend)) == {"a", "b"}  # type: ignore[arg-type]
    assert relay.status().pending == 0 and relay.health().error is None
