"""Records where a running pillow's report tables spend their time, for other processes.

A `ReportTablesProcessor` keeps its counters in memory (`ReportStats`). A thread next to the
pillow adds what changed since its last flush to the reports database every ``interval``
seconds and once more when the pillow stops (`UsageStore`), so ``changefeed status``, the
dashboard and the metrics exporter, each in its own process, see them. The pillow's loop
does nothing for it: one copy of the counters per interval, not one step per change.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from changefeed.lifecycle import StopFlag
from changefeed.pillow import Pillow
from changefeed.processors.reports import ReportStats, ReportTablesProcessor, SourceCounters
from changefeed.processors.reports.usage import UsageStore

log = logging.getLogger("changefeed.reports")

FLUSH_SECONDS = 5.0


class _Flusher:
    """One processor's counters and what of them is already stored."""

    def __init__(self, pillow: str, processor: ReportTablesProcessor) -> None:
        self.pillow = pillow
        self.processor = processor
        self.store = UsageStore(processor.engine)
        self.stored = ReportStats()

    def flush(self) -> None:
        now = self.processor.stats()
        before = self.stored
        sources: dict[str, SourceCounters] = {}
        for name, c in now.sources.items():
            b = before.sources.get(name) or SourceCounters()
            delta = SourceCounters(
                c.rows_written - b.rows_written,
                c.rows_deleted - b.rows_deleted,
                c.seconds - b.seconds,
                c.failures - b.failures,
            )
            if delta != SourceCounters():
                sources[name] = delta
        domains = {
            domain: seconds - before.domain_seconds.get(domain, 0.0)
            for domain, seconds in now.domain_seconds.items()
            if seconds != before.domain_seconds.get(domain, 0.0)
        }
        self.store.add(self.pillow, self.processor.name, sources, domains)
        self.stored = now


class ReportUsageRecorder:
    """Use as ``with ReportUsageRecorder(pillow): pillow.run()`` (``changefeed run`` does);
    a pillow without a `ReportTablesProcessor` gets no thread."""

    def __init__(self, pillow: Pillow, interval: float = FLUSH_SECONDS) -> None:
        self.interval = interval
        self._flushers = [
            _Flusher(pillow.name, p)
            for p in pillow.processors
            if isinstance(p, ReportTablesProcessor)
        ]
        self._stop = StopFlag()
        self._thread: threading.Thread | None = None

    def flush(self) -> None:
        """Store what was counted since the last flush. A reports database that cannot be
        written is logged and tried again at the next flush (nothing is dropped)."""
        for flusher in self._flushers:
            try:
                flusher.flush()
            except Exception as exc:  # noqa: BLE001 - counters must never stop the pillow
                first = str(exc).strip().splitlines()
                log.warning(
                    "reports %s: cannot record usage (kept for the next try): %s",
                    flusher.processor.name,
                    first[0] if first else type(exc).__name__,
                )

    def start(self) -> None:
        if self._flushers and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="changefeed-report-usage", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread and flush a last time."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.sleep(self.interval):
            self.flush()

    def __enter__(self) -> ReportUsageRecorder:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
