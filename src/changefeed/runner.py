"""What can be run: the `Runnable` protocol, static striding and signal handling.

Pillows, the Couch bridge, the outbox relay, the CDC relay and the retry runner all run the
same way: until stopped, stopping after the unit of work in hand, and reporting their health.
The app registers them alike, so ``changefeed run NAME``, ``run --all`` and the supervisor
can run any of them; striding and signal handling are written here once.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Protocol, runtime_checkable

from changefeed.change import TopicPartition
from changefeed.lifecycle import Health

__all__ = [
    "NotScalableError",
    "Runnable",
    "ErrorRetrier",
    "check_split",
    "run_runnable",
    "stop_on_signals",
    "stride",
]

log = logging.getLogger("changefeed.runner")


class NotScalableError(ValueError):
    """A runnable that reads one stream cannot be split across processes."""


@runtime_checkable
class Runnable(Protocol):
    """Something that runs until stopped: a pillow, a bridge, a relay, the retry runner."""

    name: str
    scalable: bool
    """Whether ``num_processes > 1`` may split the work (partitioned reads only)."""

    def bootstrap(self) -> None:
        """One-time setup before running (create index, table, slot); idempotent."""
        ...

    def run(self, *, forever: bool = True, num_processes: int = 1, process_number: int = 0) -> int:
        """Work until stopped (or, without ``forever``, until caught up); returns how many
        items were read."""
        ...

    def stop(self) -> None:
        """Stop after the unit of work in hand; safe from threads and signal handlers."""
        ...

    def health(self) -> Health:
        """A snapshot of how the runnable is doing."""
        ...


@runtime_checkable
class ErrorRetrier(Protocol):
    """A runnable that queues failures and can re-process them (pillows, the Couch bridge);
    the retry runner visits every registered runnable that is one."""

    name: str

    def retry_errors(self, limit: int = 500) -> tuple[int, int]:
        """Re-process due error-queue entries: (succeeded, failed again)."""
        ...


@runtime_checkable
class Checkpointed(Protocol):
    """Positions of what a runnable reads, per topic partition, as the app's checkpoint
    store holds them under the runnable's name: a pillow's change feed, and the Couch
    bridge (one pseudo partition ``couch:<db>``/0). The checkpoint commands show and move
    them alike."""

    def topic_partitions(self) -> list[TopicPartition]:
        """The partitions read."""
        ...

    def earliest_offsets(self) -> dict[TopicPartition, int]:
        """Where each partition starts (a reset moves there)."""
        ...

    def latest_offsets(self) -> dict[TopicPartition, int]:
        """Each partition's head."""
        ...


def stride(
    partitions: Iterable[TopicPartition], num_processes: int, process_number: int
) -> list[TopicPartition]:
    """Static partition assignment: process k of N takes every N-th of the sorted partitions
    (deterministic, and the same split CommCare HQ's pillows use)."""
    check_split(num_processes, process_number)
    return sorted(partitions)[process_number::num_processes]


def check_split(num_processes: int, process_number: int, scalable: bool = True) -> None:
    """Validate ``--num-processes``/``--process-number`` for a runnable."""
    if num_processes < 1:
        raise ValueError("num_processes must be at least 1")
    if not 0 <= process_number < num_processes:
        raise ValueError(f"process_number must be in [0, {num_processes - 1}]")
    if num_processes > 1 and not scalable:
        raise NotScalableError(
            "this runnable reads one stream and cannot be split: run it with one process"
        )


@contextmanager
def stop_on_signals(stop: Callable[[], None], name: str) -> Iterator[None]:
    """While inside, SIGTERM and SIGINT call ``stop`` (finish the work in hand, then return);
    the previous handlers are restored on exit. Only the main thread can install handlers;
    elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: signal %s, stopping after the work in hand", name, signum)
        stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_runnable(
    runnable: Runnable,
    *,
    forever: bool = True,
    num_processes: int = 1,
    process_number: int = 0,
    bootstrap: bool = True,
) -> int:
    """Run one runnable in this process the way the CLI does: checked split, bootstrap,
    signals stop it after the unit of work in hand."""
    check_split(num_processes, process_number, runnable.scalable)
    if bootstrap:
        runnable.bootstrap()
    with stop_on_signals(runnable.stop, runnable.name):
        return runnable.run(
            forever=forever, num_processes=num_processes, process_number=process_number
        )
