"""What the embedded log's publishers, feeds and admin need of it: `Connector`.

They depend on this protocol rather than on `SQLiteLog` itself, so the log (which makes
them) imports them and nothing imports back: the modules of ``backends/local`` form layers,
not a cycle (a contract in pyproject.toml keeps it so).
"""

from __future__ import annotations

import sqlite3
from typing import Protocol

from changefeed.wire import WireFormat


class Connector(Protocol):
    """A source of connections to one log file, with the settings an append needs."""

    default_partitions: int
    """Partitions of a topic a publisher creates by publishing to it."""
    wire: WireFormat
    """The stub format publishers write unless told otherwise."""

    def connect(self) -> sqlite3.Connection:
        """A new connection in autocommit mode (callers run their own transactions)."""
        ...

    def apply_retention(self, now: float | None = None) -> int:
        """Remove record batches beyond the retention limits; returns batches removed."""
        ...
