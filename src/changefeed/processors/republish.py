"""Republishing: pass changes on to another topic, or to another log (e.g. SQLite → Kafka).

Only stubs travel, never documents, so no document is fetched. Every stub field is kept —
``attempts``, ``original_publication_timestamp`` and unknown extra fields included — and only
``publish_timestamp`` is set anew, so downstream lag still measures from the first publication.
A batch goes out with one ``publish_many`` and one flush before the pillow checkpoints.

Republishing into the topic a pillow reads, on the same log, would loop forever: give another
topic, or another backend's publisher.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from changefeed.backends.base import Publisher, PublishError
from changefeed.change import Change, ChangeMeta
from changefeed.clock import SYSTEM_CLOCK, Clock
from changefeed.identifiers import topic_name
from changefeed.processors.backoff import Backoff, SinkRetrier
from changefeed.processors.base import BulkProcessor, ChangeFailure

TopicFor = Callable[[Change], "str | None"]
"""Picks the target topic of a change; None skips it."""


def _is_transient(exc: BaseException) -> bool:
    # OSError covers ConnectionError and TimeoutError; sqlite3 raises "database is locked".
    return isinstance(exc, PublishError | OSError | sqlite3.OperationalError)


class RepublishProcessor(BulkProcessor):
    """Publishes each change's stub to ``topic`` through ``publisher``.

    ``topic`` is a topic name, a function of the change (return None to skip it), or None to
    keep each change's own topic name (for a publisher on another log). ``filter`` republishes
    only the changes it accepts.
    """

    needs_documents = False

    def __init__(
        self,
        publisher: Publisher,
        topic: str | TopicFor | None = None,
        *,
        filter: Callable[[Change], bool] | None = None,
        flush_timeout: float | None = 30.0,
        backoff: Backoff | None = None,
        name: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.publisher = publisher
        if isinstance(topic, str):
            fixed = topic_name(topic)
            self.topic_for: TopicFor = lambda _change: fixed
        elif topic is None:
            self.topic_for = lambda change: change.topic
        else:
            self.topic_for = topic
        self.filter = filter
        self.flush_timeout = flush_timeout
        self.clock = clock
        self._name = name or (f"republish:{topic}" if isinstance(topic, str) else "republish")
        self._retrier = SinkRetrier(self._name, backoff, clock)

    @property
    def name(self) -> str:
        return self._name

    def stub_for(self, change: Change, now: float) -> ChangeMeta:
        """A copy of the change's stub, stamped as published now (original time kept)."""
        meta = change.metadata
        assert meta is not None, "the pillow never hands invalid stubs to processors"
        stub = meta.copy()
        stub.publish_timestamp = None  # published anew: now; the original time stays
        stub.stamp_unset(now)
        return stub

    def process_changes(self, changes: Sequence[Change]) -> list[ChangeFailure]:
        self._retrier.begin_batch()
        failures: list[ChangeFailure] = []
        items: list[tuple[str, ChangeMeta]] = []
        now = self.clock.time()
        for change in changes:
            try:
                if self.filter is not None and not self.filter(change):
                    continue
                topic = self.topic_for(change)
                if topic is None:
                    continue
                items.append((topic_name(topic), self.stub_for(change, now)))
            except Exception as exc:  # noqa: BLE001 - one bad change fails alone
                failures.append(ChangeFailure(change, exc))
        if items:
            self._retrier.call(lambda: self._publish(items), _is_transient)
        return failures

    def process_change(self, change: Change) -> None:
        self._retrier.fail_fast()
        super().process_change(change)

    def _publish(self, items: list[tuple[str, ChangeMeta]]) -> None:
        self.publisher.publish_many(items)
        self.publisher.flush(self.flush_timeout)
