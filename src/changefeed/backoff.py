"""The one backoff policy: wait ``base * factor**(attempt-1)`` seconds, capped at ``cap``.

Everything that waits before trying again uses it: a pillow whose dependency is down, the
error queue's retry schedule, sinks retrying inside a batch, the Couch feed reconnecting, the
relays and the supervisor restarting a child. One policy means one set of knobs to read and
one place where the arithmetic can be wrong.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff; ``retries`` bounds how many retries follow a first failure
    (``None``: unbounded, for loops that wait until a dependency is back)."""

    base: float = 1.0
    factor: float = 2.0
    cap: float = 60.0
    retries: int | None = None

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0 or self.factor < 1:
            raise ValueError("backoff base and cap must not be negative, factor at least 1")
        if self.retries is not None and self.retries < 0:
            raise ValueError("backoff retries must not be negative")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        exponent = max(0, attempt - 1)
        if exponent > 64:  # far past any cap; avoids float overflow
            return self.cap
        return float(min(self.cap, self.base * self.factor**exponent))

    def exhausted(self, attempt: int) -> bool:
        """True when retry number ``attempt`` is beyond ``retries``."""
        return self.retries is not None and attempt > self.retries


DEPENDENCY_BACKOFF = Backoff(base=1.0, factor=2.0, cap=60.0)
"""How a pillow waits before retrying a batch whose dependency is down."""
