"""`RecordingProcessor`: a bulk processor that records what it saw, batch by batch, and
fails or breaks on demand, so a test can check what a pillow handed over and how it met a
failure of each kind (a document's, a whole call's, a dependency's)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from changefeed.change import Change, ChangeMeta
from changefeed.processors import BulkProcessor, ChangeFailure


def change_id(change: Change) -> Any:
    """What a recording processor keeps by default: the document id."""
    return change.id


def change_stub(change: Change) -> ChangeMeta | None:
    """What a test of stub decoding keeps: the stub each change was read from."""
    return change.metadata


class RecordingProcessor(BulkProcessor):
    """Keeps ``record(change)`` for every change it processed, one list per batch.

    Before recording a batch it calls ``hook(batch number)`` (counting from 1: to stop a
    pillow, block, or raise mid-batch); raises ``ConnectionError`` for the next ``down``
    calls (a dependency down); raises ``KeyError`` for the whole call when an id of ``bad``
    is in it (the pillow must isolate); and fails, change by change, ids in ``fail`` and
    changes ``fails_when`` says yes to, with ``ValueError(message)``. Thread safe, so a
    pillow in a thread and the test can both read it."""

    def __init__(
        self,
        name: str = "record",
        *,
        record: Callable[[Change], Any] = change_id,
        needs_documents: bool = True,
        fail: Iterable[str] = (),
        bad: Iterable[str] = (),
        fails_when: Callable[[Change], bool] | None = None,
        message: str = "cannot handle {id}",
        hook: Callable[[int], None] | None = None,
    ) -> None:
        self._name = name
        self.record = record
        self.needs_documents = needs_documents
        self.fail = set(fail)
        self.bad = set(bad)
        self.fails_when = fails_when
        self.message = message
        self.hook = hook
        self.down = 0
        self.batches: list[list[Any]] = []
        self._ids: list[str] = []
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    @property
    def seen(self) -> list[Any]:
        """Everything recorded, in order, across batches."""
        with self._lock:
            return [item for batch in self.batches for item in batch]

    @property
    def ids(self) -> list[str]:
        """The ids of the changes recorded, in order, whatever ``record`` keeps."""
        with self._lock:
            return list(self._ids)

    def clear(self) -> None:
        """Forget what was recorded (batch numbers start again from 1)."""
        with self._lock:
            self.batches.clear()
            self._ids.clear()

    def process_changes(self, changes: Sequence[Change]) -> list[ChangeFailure]:
        if self.hook is not None:
            self.hook(len(self.batches) + 1)
        if self.down:
            self.down -= 1
            raise ConnectionError("sink refused the connection")
        for change in changes:
            if change.id in self.bad:
                raise KeyError(f"no field 'owner' in {change.id}")
        failures, done = [], []
        for change in changes:
            if change.id in self.fail or (self.fails_when and self.fails_when(change)):
                error = ValueError(self.message.format(id=change.id))
                failures.append(ChangeFailure(change, error))
            else:
                done.append(change)
        batch = [self.record(change) for change in done]
        with self._lock:
            self.batches.append(batch)
            self._ids.extend(change.id for change in done)
        return failures
