"""LagThrottle: writers wait while a pillow's lag is above the threshold (real SQLite log)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from changefeed.app import App
from changefeed.change import ChangeMeta, TopicPartition
from changefeed.lag import LagThrottle, LagTimeoutError
from changefeed.processors.base import NoopProcessor
from changefeed.testing.clock import FakeClock


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    a = App(f"sqlite:///{tmp_path}/log.db", f"sqlite:///{tmp_path}/state.db")
    a.add_pillow("cases", lambda app: app.constructed_pillow("cases", ["case"], NoopProcessor()))
    a.add_pillow("forms", lambda app: app.constructed_pillow("forms", ["form"], NoopProcessor()))
    yield a
    a.close()


def publish(app: App, topic: str, n: int) -> None:
    app.publisher().publish_many((topic, ChangeMeta(f"{topic}{i}", "sql", "db")) for i in range(n))


def test_no_wait_below_threshold(app: App) -> None:
    publish(app, "case", 5)
    t = FakeClock(0.0)
    throttle = LagThrottle(app, ["cases"], max_lag=5, clock=t)
    assert throttle.lag() == 5
    assert throttle.wait() == 0.0
    with throttle:
        pass
    assert t.sleeps == []


def test_times_out_while_lag_stays_high(app: App) -> None:
    publish(app, "case", 10)
    t = FakeClock(0.0)
    throttle = LagThrottle(app, ["cases"], max_lag=3, poll_interval=0.5, timeout=2.0, clock=t)
    with pytest.raises(LagTimeoutError, match="above 3"):
        throttle.wait()
    assert sum(t.sleeps) == pytest.approx(2.0)
    with pytest.raises(LagTimeoutError):
        throttle.wait(timeout=0.5)


def test_resumes_when_the_pillow_catches_up(app: App) -> None:
    publish(app, "case", 10)
    publish(app, "form", 2)
    pillow = app.get_pillow("cases")
    t = FakeClock(0.0, on_sleep=lambda _s: pillow.run(forever=False))
    throttle = LagThrottle(app, ["cases", "forms"], max_lag=4, clock=t)
    assert throttle.lags() == {"cases": 10, "forms": 2}
    waited = throttle.wait()
    assert waited == pytest.approx(throttle.poll_interval)
    assert throttle.lags(fresh=True) == {"cases": 0, "forms": 2}


def test_lag_reads_are_cached(app: App) -> None:
    publish(app, "case", 3)
    t = FakeClock(0.0)
    throttle = LagThrottle(app, ["cases"], max_lag=10, cache_seconds=1.0, clock=t)
    for _ in range(50):
        throttle.wait()
    assert throttle.reads == 1
    publish(app, "case", 20)
    assert not throttle.over()  # still cached
    t.now += 1.0
    assert throttle.over()
    assert throttle.reads == 2


def test_hysteresis_waits_for_resume_lag(app: App) -> None:
    publish(app, "case", 10)
    pillow = app.get_pillow("cases")

    def progress(_seconds: float) -> None:
        if len(t.sleeps) == 1:  # some progress: lag 5, under max_lag but over resume_lag
            app.checkpoints.commit("cases", {TopicPartition("case", 0): 5})
        else:
            pillow.run(forever=False)

    t = FakeClock(0.0, on_sleep=progress)
    throttle = LagThrottle(app, [pillow], max_lag=8, resume_lag=0, clock=t)
    throttle.wait()
    assert len(t.sleeps) == 2
    assert throttle.lag() == 0


def test_rejects_bad_arguments(app: App) -> None:
    with pytest.raises(ValueError):
        LagThrottle(app, ["cases"], max_lag=-1)
    with pytest.raises(ValueError):
        LagThrottle(app, ["cases"], max_lag=5, resume_lag=6)
    with pytest.raises(ValueError):
        LagThrottle(app, [], max_lag=5)


WATCH_APP = """
from changefeed.app import App
from changefeed.processors.base import NoopProcessor
app = App({log!r}, {state!r})
app.add_pillow("cases", lambda a: a.constructed_pillow("cases", ["case"], NoopProcessor()))
"""


def test_status_watch_refreshes(app: App, tmp_path: Path) -> None:
    """``changefeed status --watch N --json`` prints one document per refresh."""
    import json
    import os
    import subprocess

    from changefeed.supervisor import changefeed_command
    from tests.harness._util import stop_process

    (tmp_path / "cf_watch_app.py").write_text(
        WATCH_APP.format(log=app.log_url, state=app.state_url)
    )
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
    )
    publish(app, "case", 4)
    cmd = changefeed_command(
        "status", "--watch", "0.2", "--json", global_args=["--app", "cf_watch_app:app"]
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        publish(app, "case", 2)
        for _ in range(100):
            latest = json.loads(proc.stdout.readline())
            if latest[0]["lag"] == 6:
                break
    finally:
        stop_process(proc)  # type: ignore[arg-type]
    assert first[0]["pillow"] == "cases" and first[0]["lag"] == 4
    assert latest[0]["lag"] == 6
