"""Value types every runnable shares: its health report and its stop request.

They sit in the lowest layer so that sources (the Couch bridge, the relays) can implement the
`changefeed.runner.Runnable` protocol without importing the runtime above them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Health:
    """What a runnable reports about itself (for the supervisor, status and dashboards)."""

    name: str
    kind: str
    state: str = "idle"
    """``idle`` (not started), ``running``, ``backing-off`` or ``stopped``."""
    processed: int = 0
    last_progress_at: float | None = None
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "state": self.state,
            "processed": self.processed,
            "last_progress_at": self.last_progress_at,
            "error": self.error,
            **self.detail,
        }


class StopFlag:
    """A thread- and signal-safe stop request with an interruptible sleep, shared by the
    run loops so each does not write its own."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def is_set(self) -> bool:
        return self._event.is_set()

    def sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when woken by a stop request."""
        return self._event.wait(seconds)
