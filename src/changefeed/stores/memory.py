"""An in-memory document store: for unit tests, examples and the demo's sample data."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from changefeed.stores.base import DocumentDeleted, DocumentStore, Fetched


class MemoryDocumentStore(DocumentStore):
    """Documents in a dict; every save bumps the document's ``_version``."""

    def __init__(self, data_source_name: str, data_source_type: str = "memory") -> None:
        self.data_source_type = data_source_type
        self.data_source_name = data_source_name
        self._docs: dict[str, dict[str, Any]] = {}
        self._deleted: set[str] = set()
        self._versions: dict[str, int] = {}
        self._lock = threading.Lock()

    def save(self, doc_id: str, document: dict[str, Any]) -> int:
        with self._lock:
            version = self._versions.get(doc_id, 0) + 1
            self._versions[doc_id] = version
            stored = dict(document)
            stored["_id"] = doc_id
            stored["_version"] = version
            self._docs[doc_id] = stored
            self._deleted.discard(doc_id)
            return version

    def delete(self, doc_id: str) -> int:
        with self._lock:
            version = self._versions.get(doc_id, 0) + 1
            self._versions[doc_id] = version
            self._docs.pop(doc_id, None)
            self._deleted.add(doc_id)
            return version

    def get_documents(self, doc_ids: Iterable[str]) -> dict[str, Fetched]:
        out: dict[str, Fetched] = {}
        docs, deleted = self._docs, self._deleted
        for doc_id in doc_ids:
            doc = docs.get(doc_id)
            if doc is not None:
                out[doc_id] = copy.deepcopy(doc)
            elif doc_id in deleted:
                out[doc_id] = DocumentDeleted
        return out

    def iter_document_ids(self) -> Iterator[str]:
        yield from sorted(self._docs)

    def count_documents(self) -> int:
        return len(self)

    def __len__(self) -> int:
        return len(self._docs)
