"""Samples every pillow's status at an interval and keeps a short history for the dashboard.

Throughput over time comes from differences between samples: checkpoints moved per second
(processed) and heads moved per second (published), so it needs no counters in the pillows
and works for pillows running anywhere.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from changefeed.lifecycle import StopFlag
from changefeed.status import PillowStatus, pillow_status, redacted

if TYPE_CHECKING:
    from changefeed.app import App
    from changefeed.pillow import Pillow

log = logging.getLogger("changefeed.web.monitor")


class PillowMonitor:
    def __init__(
        self,
        app: App,
        pillow_names: Sequence[str] | None = None,
        *,
        interval: float = 2.0,
        history: int = 300,
    ) -> None:
        self.app = app
        self.pillow_names = list(pillow_names) if pillow_names else app.pillow_names
        self.interval = interval
        self._pillows: dict[str, Pillow] = {}
        self._latest: dict[str, PillowStatus] = {}
        self._samples: dict[str, deque[tuple[float, int, int]]] = {}
        self._history = history
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = StopFlag()
        self._thread: threading.Thread | None = None

    def pillow(self, name: str) -> Pillow:
        """This monitor's own pillow object (own feed connection), built once."""
        with self._lock:
            pillow = self._pillows.get(name)
            if pillow is None:
                pillow = self._pillows[name] = self.app.get_pillow(name)
            return pillow

    def sample(self) -> None:
        now = time.time()
        for name in self.pillow_names:
            try:
                st = pillow_status(self.app, self.pillow(name), now=now)
            except Exception as exc:  # noqa: BLE001 - show the problem, keep sampling
                with self._lock:
                    # A database error may quote the state URL with its password.
                    self._errors[name] = redacted(f"{type(exc).__name__}: {exc}")
                continue
            done = sum(p.checkpoint or 0 for p in st.partitions)
            heads = sum(p.head for p in st.partitions)
            with self._lock:
                self._errors.pop(name, None)
                self._latest[name] = st
                self._samples.setdefault(name, deque(maxlen=self._history)).append(
                    (now, done, heads)
                )

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="changefeed-monitor", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.sleep(self.interval)

    def snapshot(self) -> list[dict[str, Any]]:
        """Latest status of every pillow with its throughput series."""
        out = []
        with self._lock:
            for name in self.pillow_names:
                st = self._latest.get(name)
                entry: dict[str, Any] = st.to_dict() if st else {"pillow": name, "partitions": []}
                samples = list(self._samples.get(name, ()))
                series = []
                for (t0, d0, h0), (t1, d1, h1) in zip(samples, samples[1:], strict=False):
                    dt = t1 - t0
                    if dt > 0:
                        series.append(
                            {
                                "t": t1,
                                "processed": max(0.0, (d1 - d0) / dt),
                                "published": max(0.0, (h1 - h0) / dt),
                                "lag": max(0, h1 - d1),
                            }
                        )
                entry["throughput"] = series
                entry["error"] = self._errors.get(name)
                out.append(entry)
        return out
