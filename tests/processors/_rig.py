"""A log, a document store and the state a pillow needs, all in a temp dir: the rig the
processor tests run real pillows on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from changefeed.backends.local import SQLiteLog
from changefeed.change import ChangeMeta
from changefeed.checkpoints import CheckpointStore
from changefeed.errors import ErrorQueue
from changefeed.pillow import Pillow
from changefeed.processors.base import Processor
from changefeed.stores.memory import MemoryDocumentStore
from changefeed.stores.registry import DocumentStoreRegistry
from changefeed.testing.clock import FakeClock


class Rig:
    """Documents saved here are published to topic ``case`` as ``memory``/``cases`` stubs
    (with ``domain``). ``with_store=False`` registers no document store, so any fetch
    fails. Pillows run on ``clock``, which records their backoff sleeps instead of sleeping."""

    def __init__(
        self, tmp_path: Path, name: str, *, domain: str | None = None, with_store: bool = True
    ) -> None:
        self.name = name
        self.domain = domain
        self.log = SQLiteLog(tmp_path / "log.db")
        self.publisher = self.log.publisher()
        self.checkpoints = CheckpointStore(f"sqlite:///{tmp_path / 'state.db'}")
        self.errors = ErrorQueue(self.checkpoints.engine)
        self.stores = DocumentStoreRegistry()
        self.store = MemoryDocumentStore("cases")
        if with_store:
            self.stores.register(self.store)
        self.clock = FakeClock()

    def save(self, doc_id: str, doc: dict[str, Any]) -> None:
        self.publish(doc_id, self.store.save(doc_id, doc))

    def delete(self, doc_id: str) -> None:
        self.publish(doc_id, self.store.delete(doc_id), deleted=True)

    def publish(
        self, doc_id: str, version: int, deleted: bool = False, source: str = "cases"
    ) -> None:
        meta = ChangeMeta(
            doc_id,
            "memory",
            source,
            "case",
            domain=self.domain,
            is_deletion=deleted,
            version=version,
        )
        self.publisher.publish("case", meta)

    def pillow(
        self,
        processor: Processor,
        clock: FakeClock | None = None,
        name: str | None = None,
    ) -> Pillow:
        pillow = Pillow(
            name or self.name,
            self.log.change_feed(["case"], idle_timeout=0.05),
            processor,
            checkpoints=self.checkpoints,
            error_queue=self.errors,
            document_stores=self.stores,
            clock=clock or self.clock,
        )
        pillow.bootstrap()
        return pillow

    def close(self) -> None:
        self.publisher.close()
        self.log.close()
