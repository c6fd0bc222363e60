"""A reader thread that works one item ahead of the thread that consumes its items.

A pipelined pillow reads and fetches batch N+1 here while its main thread runs the processors
of batch N. The depth is exactly two: `Pipeline.put` returns only once the consumer took the
item (a rendezvous, not a queue), so the reader never prepares N+2 before N+1 is being
applied, and memory stays at two batches. Whatever the reader raises is raised again by
`Pipeline.take` in the consumer's thread: a reader never dies silently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from changefeed.lifecycle import StopFlag

log = logging.getLogger("changefeed.pillow")

T = TypeVar("T")

_TICK = 0.25
"""The reader re-checks `Pipeline.stopping` this often while it waits (`Pipeline.stop` may be
called from a signal handler, which must not take the lock to wake it)."""


class Pipeline(Generic[T]):
    """Runs ``produce(pipeline)`` in a thread; it hands items over with `put`, and its
    return value is `result` once `take` returned ``None`` (the end)."""

    def __init__(self, name: str, produce: Callable[[Pipeline[T]], int]) -> None:
        self.name = name
        self._produce = produce
        self._cond = threading.Condition()
        self._item: T | None = None
        self._full = False
        self._ended = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.stopping = StopFlag()
        """Set when the reader should stop: it then drops what it holds (replayed later,
        since no checkpoint covers it)."""
        self.result = 0
        self.reader_waited = 0.0
        """Seconds the reader spent waiting for the consumer to take an item."""
        self.taken = 0

    # -- the reader's side ----------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-reader", daemon=True)
        self._thread.start()

    @property
    def in_reader(self) -> bool:
        """True when called from the reader thread."""
        return threading.current_thread() is self._thread

    def _run(self) -> None:
        result = 0
        error: BaseException | None = None
        try:
            result = self._produce(self)
        except BaseException as exc:  # noqa: BLE001 - raised again in the consumer's thread
            error = exc
        with self._cond:
            self.result = result
            self._error = error
            self._ended = True
            self._cond.notify_all()

    def put(self, item: T) -> bool:
        """Hand ``item`` over and wait until it was taken. False when the pipeline is
        stopping: the item was dropped."""
        started = time.perf_counter()
        with self._cond:
            while self._full and not self.stopping.is_set():
                self._cond.wait(_TICK)
            if self.stopping.is_set():
                return False
            self._item, self._full = item, True
            self._cond.notify_all()
            while self._full and not self.stopping.is_set():
                self._cond.wait(_TICK)
            taken = not self._full
            self._item, self._full = None, False
        self.reader_waited += time.perf_counter() - started
        return taken

    def wait_for(self, event: threading.Event) -> bool:
        """Wait until ``event`` is set (True) or the pipeline stops (False)."""
        with self._cond:
            while not event.is_set() and not self.stopping.is_set():
                self._cond.wait(_TICK)
            return event.is_set()

    # -- the consumer's side --------------------------------------------------------------

    def take(self) -> T | None:
        """The next item, in the order put; ``None`` once the reader ended. Raises what the
        reader raised."""
        with self._cond:
            while not self._full and not self._ended:
                self._cond.wait()
            if self._full:
                item = self._item
                self._item, self._full = None, False
                self.taken += 1
                self._cond.notify_all()
                return item
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            return None

    def notify(self, event: threading.Event) -> None:
        """Set ``event`` and wake a reader in `wait_for`."""
        with self._cond:
            event.set()
            self._cond.notify_all()

    def stop(self) -> None:
        """Ask the reader to stop (thread- and signal-safe: it only sets a flag; a reader
        waiting in `put` sees it at its next wake-up, see `close`)."""
        self.stopping.set()

    def close(self) -> None:
        """Stop the reader, drop what it holds and wait for its thread to end (it may be
        inside a feed read: that returns at the feed's next idle tick)."""
        with self._cond:
            self.stopping.set()
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            while thread.is_alive():
                with self._cond:
                    self._cond.notify_all()
                thread.join(0.5)
