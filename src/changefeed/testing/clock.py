"""The test double of `changefeed.clock.Clock`: time that moves only when told or slept.

One double for every test (and for applications testing their own pillows), so a test of
batching, backoff or the error queue's schedule never really waits and never depends on
how fast the machine is.
"""

from __future__ import annotations

from collections.abc import Callable

from changefeed.lifecycle import StopFlag

__all__ = ["FakeClock"]


class FakeClock:
    """A `Clock` whose wall and monotonic time are ``now``; `sleep` records the wait,
    advances ``now`` by it and then calls ``on_sleep`` (a test's way to make something
    happen during a wait, like a server coming back)."""

    def __init__(
        self, now: float = 1000.0, on_sleep: Callable[[float], object] | None = None
    ) -> None:
        self.now = now
        self.sleeps: list[float] = []
        """Every wait asked for, in order."""
        self.on_sleep = on_sleep

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time on without recording a sleep (time passing while work was done)."""
        self.now += seconds

    def sleep(self, seconds: float, wake: StopFlag | None = None) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(seconds)
