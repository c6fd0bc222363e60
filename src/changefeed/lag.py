"""Back-pressure for writers: slow down when a pillow falls too far behind.

A bulk import can publish far faster than pillows process, and the derived data (search
index, reports) then goes stale for everyone. `LagThrottle` lets the writer wait while a
pillow's lag is above a threshold. Lag reads are cached for ``cache_seconds`` so calling
`LagThrottle.wait` before every write costs a clock read, not a database round trip.

    throttle = LagThrottle(app, ["case-search"], max_lag=50_000)
    for chunk in chunks:
        throttle.wait()          # or: with throttle: ...
        save_and_publish(chunk)

The lag is the one `changefeed.checkpoints.partition_lag` that ``changefeed status`` also
sums, read here from the pillow's feed and the checkpoint store, so this runtime module needs
nothing from the application layer but the small `LagSource` it declares.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from changefeed.checkpoints import CheckpointStore, partition_lag
from changefeed.clock import SYSTEM_CLOCK, Clock

if TYPE_CHECKING:
    from changefeed.pillow import Pillow


class LagSource(Protocol):
    """What a throttle needs from the application (an `App` is one): the checkpoint store and
    the pillows by name."""

    @property
    def checkpoints(self) -> CheckpointStore: ...

    def get_pillow(self, name: str) -> Pillow: ...


def pillow_lag(checkpoints: CheckpointStore, pillow: Pillow) -> int:
    """Changes in the pillow's topics not yet checkpointed, over all its partitions."""
    saved = checkpoints.get(pillow.name)
    heads = pillow.change_feed.latest_offsets()
    return sum(partition_lag(head, saved.get(tp)) for tp, head in heads.items())


class LagTimeoutError(TimeoutError):
    """The lag stayed above the threshold for longer than the writer was willing to wait."""


class LagThrottle:
    """Blocks writers while the largest lag of ``pillows`` is above ``max_lag``.

    Once throttled, writers resume only when the lag is at or below ``resume_lag`` (default:
    ``max_lag``); a lower value avoids flapping around the threshold.
    """

    def __init__(
        self,
        app: LagSource,
        pillows: Sequence[str | Pillow],
        max_lag: int,
        *,
        resume_lag: int | None = None,
        cache_seconds: float = 1.0,
        poll_interval: float = 0.5,
        timeout: float | None = 60.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if max_lag < 0:
            raise ValueError("max_lag must be >= 0")
        if resume_lag is not None and not 0 <= resume_lag <= max_lag:
            raise ValueError("resume_lag must be between 0 and max_lag")
        if not pillows:
            raise ValueError("LagThrottle needs at least one pillow")
        self.app = app
        self._pillows = [app.get_pillow(p) if isinstance(p, str) else p for p in pillows]
        self.max_lag = max_lag
        self.resume_lag = max_lag if resume_lag is None else resume_lag
        self.cache_seconds = cache_seconds
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.clock = clock
        self._lag: dict[str, int] = {}
        self._read_at: float | None = None
        self.reads = 0
        """Lag reads from the log and state (not served from the cache)."""
        self.waited = 0.0
        """Total seconds writers spent waiting."""

    def lags(self, fresh: bool = False) -> dict[str, int]:
        """Lag per pillow, read at most once per ``cache_seconds`` unless ``fresh``."""
        now = self.clock.monotonic()
        if fresh or self._read_at is None or now - self._read_at >= self.cache_seconds:
            checkpoints = self.app.checkpoints
            self._lag = {p.name: pillow_lag(checkpoints, p) for p in self._pillows}
            self._read_at = now
            self.reads += 1
        return dict(self._lag)

    def lag(self, fresh: bool = False) -> int:
        """The largest lag among the pillows."""
        return max(self.lags(fresh).values())

    def over(self) -> bool:
        """True when writers should wait now (cached)."""
        return self.lag() > self.max_lag

    def wait(self, timeout: float | None = None) -> float:
        """Return at once when lag is within bounds; otherwise sleep until it falls to
        ``resume_lag``. Returns seconds waited; raises `LagTimeoutError` after ``timeout``
        seconds (default: the throttle's own, where None means wait as long as it takes)."""
        limit = self.timeout if timeout is None else timeout
        if not self.over():
            return 0.0
        started = self.clock.monotonic()
        while True:
            waited = self.clock.monotonic() - started
            if limit is not None and waited >= limit:
                self.waited += waited
                lags = ", ".join(f"{k}={v}" for k, v in sorted(self._lag.items()))
                raise LagTimeoutError(
                    f"pillow lag stayed above {self.max_lag} for {waited:.1f}s ({lags})"
                )
            step = self.poll_interval
            if limit is not None:
                step = min(step, max(0.0, limit - waited))
            self.clock.sleep(step)
            if self.lag(fresh=True) <= self.resume_lag:
                waited = self.clock.monotonic() - started
                self.waited += waited
                return waited

    def __enter__(self) -> LagThrottle:
        self.wait()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None
