"""The error retry runner: re-processes due error-queue entries of pillows, forever.

Pillows never retry their own failures inline (that would hold up the log behind one bad
document); this loop does it on the side, on the error queue's backoff schedule. The
supervisor runs it as one more child process next to the pillows.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from changefeed.app import App
    from changefeed.pillow import Pillow

log = logging.getLogger("changefeed.retry_runner")


class RetryRunner:
    """Calls `Pillow.retry_errors` for each pillow every ``interval`` seconds."""

    def __init__(
        self,
        app: App,
        pillow_names: Sequence[str] | None = None,
        *,
        interval: float = 5.0,
        limit: int = 500,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.app = app
        self.pillow_names = list(pillow_names) if pillow_names else app.pillow_names
        self.interval = interval
        self.limit = limit
        self._pillows: dict[str, Pillow] = {}
        self._stop = threading.Event()

    def pillow(self, name: str) -> Pillow:
        pillow = self._pillows.get(name)
        if pillow is None:
            pillow = self._pillows[name] = self.app.get_pillow(name)
        return pillow

    def run_once(self) -> dict[str, tuple[int, int]]:
        """One pass over every pillow: {pillow: (succeeded, failed again)}."""
        results: dict[str, tuple[int, int]] = {}
        for name in self.pillow_names:
            if self._stop.is_set():
                break
            try:
                ok, failed = self.pillow(name).retry_errors(limit=self.limit)
            except Exception as exc:  # noqa: BLE001 - one pillow's trouble must not stop the rest
                log.error("retry runner: pillow %s: %s: %s", name, type(exc).__name__, exc)
                continue
            if ok or failed:
                log.info("retry runner: %s: %d resolved, %d failed again", name, ok, failed)
            results[name] = (ok, failed)
        return results

    def run(self) -> None:
        """Retry until stopped; a pass that hit its limit is followed at once by the next."""
        self._stop.clear()
        while not self._stop.is_set():
            results = self.run_once()
            busy = any(ok + failed >= self.limit for ok, failed in results.values())
            if not busy:
                self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("retry runner: signal %s, stopping", signum)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
