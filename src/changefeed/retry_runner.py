"""The error retry runner: re-processes due error-queue entries of pillows, until stopped.

Pillows never retry their own failures inline (that would hold up the log behind one bad
document); this loop does it on the side, on the error queue's backoff schedule. It is a
`Runnable` like the pillows, so the supervisor runs it as one more child process and signals
stop it the same way (`changefeed.runner.run_runnable`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol

from changefeed.lifecycle import Health, StopFlag
from changefeed.runner import ErrorRetrier, Runnable

log = logging.getLogger("changefeed.retry_runner")

RETRY_RUNNER = "retry-runner"
"""The retry runner's name (its CLI command and its supervisor child)."""


class PillowSource(Protocol):
    """What the retry runner needs from the application: what is registered and how to
    build it. Declared here so the runtime does not import the application layer."""

    @property
    def runnable_names(self) -> list[str]: ...

    def get_runnable(self, name: str) -> Runnable: ...


class RetryRunner:
    """Calls ``retry_errors`` every ``interval`` seconds on each registered runnable that
    queues failures (an `ErrorRetrier`: pillows and the Couch bridge)."""

    name = RETRY_RUNNER
    scalable = False
    """One process: two runners would retry the same due entries twice."""

    def __init__(
        self,
        app: PillowSource,
        pillow_names: Sequence[str] | None = None,
        *,
        interval: float = 5.0,
        limit: int = 500,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.app = app
        self.pillow_names = list(pillow_names) if pillow_names else app.runnable_names
        self.interval = interval
        self.limit = limit
        self._targets: dict[str, ErrorRetrier | None] = {}
        self._stop = StopFlag()
        self._state = "idle"
        self._resolved = 0
        self._failed = 0
        self._last_progress_at: float | None = None
        self._error: str | None = None

    def target(self, name: str) -> ErrorRetrier | None:
        """The runnable called ``name`` if it queues failures, else None (e.g. a relay)."""
        if name not in self._targets:
            runnable = self.app.get_runnable(name)
            self._targets[name] = runnable if isinstance(runnable, ErrorRetrier) else None
        return self._targets[name]

    def bootstrap(self) -> None:
        """Nothing to set up: the error queue's table is made on first use."""

    def run_once(self) -> dict[str, tuple[int, int]]:
        """One pass over every pillow: {pillow: (succeeded, failed again)}."""
        results: dict[str, tuple[int, int]] = {}
        for name in self.pillow_names:
            if self._stop.is_set():
                break
            try:
                target = self.target(name)
                if target is None:
                    continue
                ok, failed = target.retry_errors(limit=self.limit)
            except Exception as exc:  # noqa: BLE001 - one pillow's trouble must not stop the rest
                log.error("retry runner: pillow %s: %s: %s", name, type(exc).__name__, exc)
                self._error = f"{name}: {type(exc).__name__}: {exc}"
                continue
            if ok or failed:
                log.info("retry runner: %s: %d resolved, %d failed again", name, ok, failed)
                self._resolved += ok
                self._failed += failed
                self._last_progress_at = time.time()
            results[name] = (ok, failed)
        return results

    def run(self, *, forever: bool = True, num_processes: int = 1, process_number: int = 0) -> int:
        """Retry until stopped; a pass that hit its limit is followed at once by the next.
        Without ``forever``, stop after the first pass that did not hit its limit. Returns how
        many entries were retried."""
        del num_processes, process_number  # not scalable: checked by `run_runnable`
        self._stop.clear()
        self._state = "running"
        retried = 0
        try:
            while not self._stop.is_set():
                results = self.run_once()
                retried += sum(ok + failed for ok, failed in results.values())
                busy = any(ok + failed >= self.limit for ok, failed in results.values())
                if busy:
                    continue
                if not forever:
                    break
                self._stop.sleep(self.interval)
        finally:
            self._state = "stopped"
        return retried

    def stop(self) -> None:
        self._stop.set()

    def health(self) -> Health:
        return Health(
            name=self.name,
            kind="retry-runner",
            state=self._state,
            processed=self._resolved + self._failed,
            last_progress_at=self._last_progress_at,
            error=self._error,
            detail={
                "resolved": self._resolved,
                "failed_again": self._failed,
                "pillows": list(self.pillow_names),
            },
        )
