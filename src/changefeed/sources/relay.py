"""The run loop shared by the relays that move stubs from a database into the log.

The outbox relay and the CDC relay do the same thing around different sources: take a batch,
publish it, let the source forget it only after the log acknowledged it, go on at once while
there is more, wait ``poll_interval`` when the source is drained, and back off (the one
`Backoff` policy) when the source or the log fails, since the source keeps everything not yet
confirmed. That loop is written here once; a relay supplies `relay_batch` and says which
failures retrying cannot fix (`retryable`).

A relay reads one stream (an outbox table under a lock, a replication slot), so it is a
``changefeed.runner.Runnable`` that cannot be split across processes (``scalable = False``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from changefeed.backoff import Backoff
from changefeed.identifiers import object_name
from changefeed.lifecycle import Health, StopFlag
from changefeed.sources.host import check_one_process

log = logging.getLogger("changefeed.sources.relay")

RELAY_BACKOFF = Backoff(base=0.5, factor=2.0, cap=30.0)
"""How a relay waits after a failed batch: 0.5 s, doubling, at most 30 s, without end."""


@dataclass(slots=True)
class RelayStats:
    """Counters of one relay object (across its runs)."""

    published: int = 0
    batches: int = 0
    last_batch_at: float | None = None


@dataclass(frozen=True, slots=True)
class RelayBatch:
    """What one `Relay.relay_batch` did."""

    read: int
    """Items taken from the source (rows, wal2json records), published or not."""
    published: int
    drained: bool
    """The source had nothing more when read: wait ``poll_interval`` (or, once, stop)."""


class Relay:
    """Base of the relays: the loop, stop, health and the counters.

    Subclasses implement `relay_batch`, and may override `retryable` (failures retrying
    cannot fix end `run` even when running forever), `prepare` (checks before the loop),
    `reset` (drop connections after a failure) and `close`.
    """

    kind = "relay"
    scalable = False

    def __init__(
        self,
        name: str,
        *,
        poll_interval: float,
        backoff: Backoff | None = None,
        stats: RelayStats | None = None,
    ) -> None:
        if poll_interval < 0:
            raise ValueError("poll_interval must not be negative")
        self.name = object_name(name, "relay name")
        self.poll_interval = poll_interval
        self.backoff = backoff or RELAY_BACKOFF
        self.stats = stats or RelayStats()
        self._stop = StopFlag()
        self._state = "idle"
        self._error: str | None = None
        self._last_progress_at: float | None = None

    # -- what a relay supplies -----------------------------------------------------------

    def relay_batch(self, forever: bool) -> RelayBatch:
        """Read, publish, flush and confirm one batch."""
        raise NotImplementedError

    def retryable(self, exc: Exception) -> bool:
        """Whether a failure of `relay_batch` is worth retrying when running forever."""
        return True

    def prepare(self) -> None:
        """Checks before the loop; what fails here is a configuration error, not retried."""

    def reset(self) -> None:
        """Forget connections after a failed batch, so the next one starts afresh."""

    def close(self) -> None:
        """Release connections (``run`` calls it when it returns)."""

    def health_detail(self) -> dict[str, object]:
        """What this kind of relay adds to `health` (cheap: no queries)."""
        return {}

    # -- counting, for subclasses --------------------------------------------------------

    def count_batch(self, published: int) -> None:
        """Record a batch that reached the log (also outside ``run``: ``relay_once``)."""
        stats = self.stats
        stats.published += published
        stats.batches += 1
        stats.last_batch_at = time.time()
        if published:
            self._last_progress_at = stats.last_batch_at

    # -- Runnable --------------------------------------------------------------------------

    def bootstrap(self) -> None:
        """Nothing by default: the source's table or slot is the application's to create."""

    def run(self, *, forever: bool = True, num_processes: int = 1, process_number: int = 0) -> int:
        """Relay until stopped (``forever``) or until the source is drained; returns how many
        stubs were published. A failed batch is retried with `backoff` when running forever
        (the source still has it); otherwise the failure is raised."""
        check_one_process(f"{self.kind} {self.name}", num_processes, process_number)
        total = 0
        failures = 0
        self._state = "running"
        try:
            self.prepare()
            while not self._stop.is_set():
                try:
                    batch = self.relay_batch(forever)
                except Exception as exc:
                    failures += 1
                    if not forever or not self.retryable(exc) or self.backoff.exhausted(failures):
                        self._error = f"{type(exc).__name__}: {exc}"
                        raise
                    self._back_off(exc, failures)
                    continue
                failures = 0
                self._state, self._error = "running", None
                total += batch.published
                if not batch.drained:
                    continue
                if not forever:
                    break
                self._stop.sleep(self.poll_interval)
        finally:
            self._state = "stopped"
            self.close()
        return total

    def _back_off(self, exc: Exception, failures: int) -> None:
        delay = self.backoff.delay(failures)
        self._state, self._error = "backing-off", f"{type(exc).__name__}: {exc}"
        log.warning(
            "%s %s: batch failed (%s); retrying in %.1fs", self.kind, self.name, self._error, delay
        )
        self.reset()
        self._stop.sleep(delay)

    def stop(self) -> None:
        """Return from `run` after the batch in hand (thread- and signal-safe)."""
        self._stop.set()

    def health(self) -> Health:
        """State, stubs published so far, the last failure while backing off, and the
        relay's own counters in ``detail``."""
        return Health(
            self.name,
            self.kind,
            state=self._state,
            processed=self.stats.published,
            last_progress_at=self._last_progress_at,
            error=self._error,
            detail={
                "batches": self.stats.batches,
                "last_batch_at": self.stats.last_batch_at,
                **self.health_detail(),
            },
        )
