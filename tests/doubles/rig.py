"""`PillowRig`: what a test needs to run a real pillow, all in a temp dir: a fresh embedded
log, a memory document store, checkpoints and an error queue in SQLite (or on a database the
test names), and a `FakeClock` that records backoff sleeps instead of sleeping."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from changefeed.backends.base import ChangeFeed
from changefeed.backends.local import SQLiteLog
from changefeed.change import ChangeMeta, TopicPartition
from changefeed.checkpoints import CheckpointStore
from changefeed.errors import ErrorQueue, RetryPolicy
from changefeed.pillow import BatchPolicy, Pillow
from changefeed.processors.base import Processor
from changefeed.stores.memory import MemoryDocumentStore
from changefeed.stores.registry import DocumentStoreRegistry
from changefeed.testing.clock import FakeClock
from tests.doubles.feeds import TOPIC

S = TypeVar("S", bound=MemoryDocumentStore)


class PillowRig(Generic[S]):
    """Documents saved through the rig go to ``store`` (of a type `S` of the test's own, such
    as one that counts fetches) and their stubs (``memory``/store name, with ``doc_type``
    and ``domain``) to ``topic``. ``with_store=False`` registers no store, so every fetch
    fails. Pillows are named ``name``, batch by ``batching`` (the
    pillow's default when None), are bootstrapped when built if ``bootstrap``, and run on
    ``clock``, which the error queue shares."""

    def __init__(
        self,
        tmp_path: Path,
        name: str = "test-pillow",
        *,
        topic: str = TOPIC,
        partitions: int = 1,
        doc_type: str | None = None,
        domain: str | None = None,
        store: S,
        with_store: bool = True,
        state_url: str | None = None,
        retry_policy: RetryPolicy | None = None,
        batching: BatchPolicy | None = None,
        bootstrap: bool = False,
    ) -> None:
        self.name = name
        self.topic = topic
        self.doc_type = doc_type
        self.domain = domain
        self.batching = batching
        self.bootstrap = bootstrap
        self.log = SQLiteLog(tmp_path / "log.db")
        self.log.admin().create_topic(topic, partitions)
        self.publisher = self.log.publisher()
        self.published = 0
        self.checkpoints = CheckpointStore(state_url or f"sqlite:///{tmp_path / 'state.db'}")
        self.clock = FakeClock()
        self.errors = ErrorQueue(self.checkpoints.engine, retry_policy, clock=self.clock)
        self.stores = DocumentStoreRegistry()
        self.store = store
        if with_store:
            self.stores.register(self.store)

    @staticmethod
    def cases(tmp_path: Path, name: str, **options: Any) -> CaseRig:
        """The rig of the processor tests: ``case`` documents in store ``cases``, published
        to topic ``case``; pillows bootstrapped (indexes, tables) when built."""
        store = MemoryDocumentStore("cases")
        return PillowRig(
            tmp_path, name, topic="case", doc_type="case", store=store, bootstrap=True, **options
        )

    def save(
        self, doc_id: str, data: dict[str, Any] | None = None, store: str | None = None
    ) -> int:
        """Save a document (``{"n": 1}`` when the test does not care which) and publish its
        change; returns its version."""
        target = self._store(store)
        version = target.save(doc_id, {"n": 1} if data is None else data)
        self.publish(self.stub(doc_id, version, source=target.data_source_name))
        return version

    def delete(self, doc_id: str, store: str | None = None) -> int:
        target = self._store(store)
        version = target.delete(doc_id)
        self.publish(self.stub(doc_id, version, deleted=True, source=target.data_source_name))
        return version

    def stub(
        self, doc_id: str, version: int | None = None, *, deleted: bool = False, source: str = ""
    ) -> ChangeMeta:
        """The stub the rig publishes for a document (of ``store`` unless ``source``)."""
        return ChangeMeta(
            doc_id,
            "memory",
            source or self.store.data_source_name,
            self.doc_type,
            domain=self.domain,
            is_deletion=deleted,
            version=version,
        )

    def publish(self, meta: ChangeMeta) -> None:
        self.publisher.publish(self.topic, meta)
        self.published += 1

    def raw(self, key: str, value: bytes) -> None:
        """Append a record that need not be a valid stub."""
        self.publisher.append_raw([(self.topic, key, value)])
        self.published += 1

    def feed(self) -> ChangeFeed:
        return self.log.change_feed([self.topic], idle_timeout=0.05)

    def pillow(
        self,
        processors: Processor | Sequence[Processor],
        *,
        feed: ChangeFeed | None = None,
        name: str | None = None,
        error_queue: ErrorQueue | None = None,
        **options: Any,
    ) -> Pillow:
        """A pillow on the rig's log (or ``feed``), state, stores and clock; ``options``
        go to `Pillow` as they are."""
        if self.batching is not None:
            options.setdefault("batching", self.batching)
        options.setdefault("clock", self.clock)
        pillow = Pillow(
            name or self.name,
            self.feed() if feed is None else feed,
            processors,
            checkpoints=self.checkpoints,
            error_queue=self.errors if error_queue is None else error_queue,
            document_stores=self.stores,
            **options,
        )
        if self.bootstrap:
            pillow.bootstrap()
        return pillow

    def checkpoint(self, name: str | None = None) -> dict[TopicPartition, int]:
        return self.checkpoints.get(name or self.name)

    def position(self) -> int:
        """How many changes the pillow's checkpoint moved past, over all partitions."""
        return sum(self.checkpoint().values())

    def close(self) -> None:
        self.publisher.close()
        self.log.close()

    def _store(self, name: str | None) -> MemoryDocumentStore:
        if name is None:
            return self.store
        found = self.stores.get("memory", name)
        assert isinstance(found, MemoryDocumentStore)
        return found


CaseRig = PillowRig[MemoryDocumentStore]
"""The rig `PillowRig.cases` builds."""
