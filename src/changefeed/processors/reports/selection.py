"""Which data sources of a provider one `ReportTablesProcessor` takes: a selection.

A huge set of data sources is split over pillows (each a process with its own checkpoints,
like CommCare HQ's ``include_ucrs``, ``exclude_ucrs`` and ``ucr_division``) by name lists or
by a division: ``"A-B/N"`` takes the data sources whose table name hashes into slots A to B
(inclusive) of N, ``"K/N"`` slot K alone. The hash is the first 8 hex digits of the SHA-256 of
the table name, modulo N: the same on every machine and every run, and a table keeps its slot
when other data sources come and go.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from changefeed.processors.reports.config import DataSourceConfig

_DIVISION = re.compile(r"^(\d+)(?:-(\d+))?/(\d+)$")


class SelectionError(ValueError):
    """A selection that cannot be used (a malformed division)."""


def slot(table: str, slots: int) -> int:
    """The division slot of a table name, out of ``slots``."""
    return int(hashlib.sha256(table.encode()).hexdigest()[:8], 16) % slots


@dataclass(frozen=True, slots=True)
class Division:
    start: int
    end: int
    slots: int

    @classmethod
    def parse(cls, text: str) -> Division:
        found = _DIVISION.match(text.strip())
        if not found:
            raise SelectionError(f"division {text!r}: expected 'K/N' or 'A-B/N' (e.g. '0-3/8')")
        start, end, slots = int(found[1]), int(found[2] or found[1]), int(found[3])
        if slots < 1 or not 0 <= start <= end < slots:
            raise SelectionError(f"division {text!r}: need 0 <= A <= B < N")
        return cls(start, end, slots)

    def __contains__(self, table: object) -> bool:
        return isinstance(table, str) and self.start <= slot(table, self.slots) <= self.end

    def __str__(self) -> str:
        if self.start == self.end:
            return f"{self.start}/{self.slots}"
        return f"{self.start}-{self.end}/{self.slots}"


@dataclass(frozen=True, slots=True)
class Selection:
    """``include`` (names; None takes all), ``exclude`` (names), ``division``; all apply."""

    include: frozenset[str] | None = None
    exclude: frozenset[str] = frozenset()
    division: Division | None = None

    @classmethod
    def of(
        cls,
        include: Iterable[str] | None = None,
        exclude: Iterable[str] | None = None,
        division: str | Division | None = None,
    ) -> Selection:
        if isinstance(include, str) or isinstance(exclude, str):
            raise SelectionError("include and exclude take lists of data source names")
        return cls(
            frozenset(include) if include is not None else None,
            frozenset(exclude or ()),
            Division.parse(division) if isinstance(division, str) else division,
        )

    def selects(self, config: DataSourceConfig) -> bool:
        return self.takes(config.name, config.table)

    def takes(self, name: str, table: str) -> bool:
        """Whether a data source of this name and table is selected (also for a stored
        state, whose definition may be gone from the provider)."""
        if self.include is not None and name not in self.include:
            return False
        if name in self.exclude:
            return False
        return self.division is None or table in self.division

    @property
    def everything(self) -> bool:
        return self.include is None and not self.exclude and self.division is None

    def __str__(self) -> str:
        parts = []
        if self.include is not None:
            parts.append(f"include={','.join(sorted(self.include))}")
        if self.exclude:
            parts.append(f"exclude={','.join(sorted(self.exclude))}")
        if self.division is not None:
            parts.append(f"division={self.division}")
        return " ".join(parts) or "all"
