"""Bounded retries for a processor's sink (Elasticsearch, Redis, another log), then fail fast.

A sink that hiccups (a dropped connection, a 429) is retried a few times with exponential
backoff inside the batch. If it is still failing, the processor raises `SinkUnavailableError`
and the pillow's dependency-down backoff takes over for the whole batch. The pillow first
retries the batch change by change; `SinkRetrier.fail_fast` makes those single-change calls
fail at once with the same error type instead of waiting out the backoff N more times, so the
pillow recognises "the whole batch failed the same way" within milliseconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from changefeed.backoff import Backoff
from changefeed.clock import SYSTEM_CLOCK, Clock

__all__ = ["SINK_BACKOFF", "Backoff", "SinkRetrier", "SinkUnavailableError"]

log = logging.getLogger("changefeed.processors")

T = TypeVar("T")


class SinkUnavailableError(ConnectionError):
    """A processor's sink stayed unreachable (or overloaded) through its bounded retries."""

    def __init__(self, sink: str, cause: BaseException | str, attempts: int = 0) -> None:
        reason = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        tries = f" after {attempts} attempts" if attempts else ""
        super().__init__(f"{sink} unavailable{tries}: {reason}")
        self.sink = sink
        self.reason = reason


SINK_BACKOFF = Backoff(base=0.2, factor=2.0, cap=5.0, retries=3)
"""A sink's retries inside a batch: few and short, since the pillow's own dependency backoff
takes over once they are spent."""


class SinkRetrier:
    """Runs sink calls with bounded backoff and remembers an outage until the next batch."""

    def __init__(
        self,
        sink: str,
        backoff: Backoff | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.sink = sink
        self.backoff = backoff or SINK_BACKOFF
        if self.backoff.retries is None:
            raise ValueError("a sink's backoff needs a bound on retries (it must fail fast)")
        self.retries: int = self.backoff.retries
        self.clock = clock
        self.down: SinkUnavailableError | None = None

    def begin_batch(self) -> None:
        """A new batch gets a fresh chance, whatever happened before."""
        self.down = None

    def fail_fast(self) -> None:
        """Raise at once if the sink was found unavailable earlier in this batch."""
        if self.down is not None:
            raise SinkUnavailableError(self.sink, self.down.reason)

    def wait(self, retry: int, cause: BaseException | str) -> None:
        delay = self.backoff.delay(retry)
        log.info("%s: retry %d in %.2fs after %s", self.sink, retry, delay, cause)
        self.clock.sleep(delay)

    def give_up(self, cause: BaseException | str) -> SinkUnavailableError:
        """The error to raise once retries are exhausted; later calls in the batch fail fast."""
        self.down = SinkUnavailableError(self.sink, cause, self.retries + 1)
        return self.down

    def next_try(self, retry: int, cause: BaseException | str) -> int:
        """After try number ``retry`` failed for ``cause``: wait and return the next try's
        number, or raise `SinkUnavailableError` once the retries are spent."""
        if retry >= self.retries:
            if isinstance(cause, BaseException):
                raise self.give_up(cause) from cause
            raise self.give_up(cause)
        self.wait(retry + 1, cause)
        return retry + 1

    def call(self, func: Callable[[], T], is_transient: Callable[[BaseException], bool]) -> T:
        """``func()``, retried on transient errors; `SinkUnavailableError` when they persist."""
        retry = 0
        while True:
            try:
                return func()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                retry = self.next_try(retry, exc)
