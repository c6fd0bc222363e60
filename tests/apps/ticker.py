"""A test app with one pillow and one runnable that is not a pillow, for the CLI's
``run NAME``, ``pillows`` and ``status`` with other runnables.

The ``ticker`` runnable reads a single stream (not scalable), counts ``TICKER_COUNT`` items
(default 3) and appends one line per run to ``TICKER_OUT`` with its arguments.
"""

from __future__ import annotations

import os

from changefeed import App
from changefeed.lifecycle import Health, StopFlag
from changefeed.processors.base import NoopProcessor


class Ticker:
    """The smallest `changefeed.runner.Runnable`."""

    name = "ticker"
    scalable = False

    def __init__(self) -> None:
        self._stop = StopFlag()
        self._processed = 0
        self._state = "idle"

    def bootstrap(self) -> None:
        self._write("bootstrap")

    def run(self, *, forever: bool = True, num_processes: int = 1, process_number: int = 0) -> int:
        self._state = "running"
        count = int(os.environ.get("TICKER_COUNT", "3"))
        self._processed += count
        if forever:
            while not self._stop.sleep(0.05):
                pass
        self._write(f"run forever={forever} {num_processes} {process_number}")
        self._state = "stopped"
        return count

    def stop(self) -> None:
        self._stop.set()

    def health(self) -> Health:
        return Health(self.name, "ticker", self._state, self._processed, detail={"seq": "7-abc"})

    def _write(self, line: str) -> None:
        out = os.environ.get("TICKER_OUT")
        if out:
            with open(out, "a") as f:
                f.write(line + "\n")


app = App()
app.add_pillow("noop", lambda a: a.constructed_pillow("noop", ["records"], NoopProcessor()))
app.add_runnable("ticker", lambda a: Ticker())
