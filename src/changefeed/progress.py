"""The progress bar of the long-running document passes (reindex, verify): one look for both,
shown on a terminal only."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def document_progress(
    console: Console, show: bool, *, remaining: bool = True, transient: bool = False
) -> Progress:
    """A bar counting documents; ``show=False`` makes it a no-op (piped output, tests)."""
    columns: list[ProgressColumn | str] = [
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("docs"),
        TimeElapsedColumn(),
    ]
    if remaining:
        columns.append(TimeRemainingColumn())
    return Progress(*columns, console=console, disable=not show, transient=transient)
