"""The one clock and its test double."""

from __future__ import annotations

import threading

from changefeed.clock import SYSTEM_CLOCK
from changefeed.lifecycle import StopFlag
from changefeed.testing.clock import FakeClock


def test_the_system_clock_sleep_ends_when_woken_from_another_thread() -> None:
    wake = StopFlag()
    woke: list[bool] = []

    def sleeper() -> None:
        SYSTEM_CLOCK.sleep(3600, wake)  # a stop request cuts the wait short
        woke.append(wake.is_set())

    thread = threading.Thread(target=sleeper)
    thread.start()
    wake.set()
    thread.join()
    assert woke == [True]


def test_the_fake_clock_moves_only_when_slept_or_advanced() -> None:
    during: list[float] = []
    clock = FakeClock(50.0, on_sleep=lambda seconds: during.append(clock.now))
    assert clock.time() == clock.monotonic() == 50.0
    clock.sleep(2.5)
    clock.advance(1.0)
    clock.sleep(0.5, StopFlag())
    assert clock.sleeps == [2.5, 0.5]
    assert during == [52.5, 54.0], "on_sleep runs after time moved"
    assert clock.time() == clock.monotonic() == 54.0
