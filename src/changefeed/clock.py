"""The one clock: the time and the sleeps of every part that waits or stamps, together.

Time and sleep go together so a test double can make them agree: a test gives a part a
`changefeed.testing.clock.FakeClock`, whose sleeps move its time, and nothing in the test
really waits. Wall time (`Clock.time`) is what is stored (checkpoints, the error queue);
`Clock.monotonic` measures intervals that a change of the system clock must not bend.
"""

from __future__ import annotations

import time
from typing import Protocol

from changefeed.lifecycle import StopFlag

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


class Clock(Protocol):
    """What a part asks of time."""

    def time(self) -> float:
        """Seconds since the epoch (stored and compared across processes)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start, never going back (for intervals)."""
        ...

    def sleep(self, seconds: float, wake: StopFlag | None = None) -> None:
        """Wait ``seconds``, or less when ``wake`` is set meanwhile (a stop request)."""
        ...


class SystemClock:
    """The machine's clocks; sleeping blocks the calling thread."""

    __slots__ = ()

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float, wake: StopFlag | None = None) -> None:
        if wake is None:
            time.sleep(seconds)
        else:
            wake.sleep(seconds)


SYSTEM_CLOCK: Clock = SystemClock()
"""The default of every part that takes a clock."""
