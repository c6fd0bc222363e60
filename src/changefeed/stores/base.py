"""The document store contract: how a pillow gets the full document behind a stub.

Stubs never carry documents, so every consumer goes through a store. "Not found" (the id is
unknown, maybe not replicated yet) and "deleted" (the store knows the document is gone) are
different answers: the first is an error worth retrying, the second is a normal change.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any, Final


class _Deleted:
    __slots__ = ()

    def __repr__(self) -> str:
        return "DocumentDeleted"

    def __bool__(self) -> bool:
        return False


DocumentDeleted: Final = _Deleted()
"""Returned in place of a document the store knows to be deleted."""

Document = dict[str, Any]
Fetched = Document | _Deleted


class DocumentNotFoundError(LookupError):
    """The store has no document with this id (neither live nor deleted)."""


class UnknownDocumentStoreError(LookupError):
    """No document store is registered for a stub's (data_source_type, data_source_name)."""


class DocumentStore(ABC):
    """Fetches documents of one source, singly, in bulk, or all of them for a reindex."""

    data_source_type: str = ""
    data_source_name: str = ""

    @abstractmethod
    def get_documents(self, doc_ids: Iterable[str]) -> dict[str, Fetched]:
        """Documents by id; deleted ones map to `DocumentDeleted`, unknown ids are absent."""

    @abstractmethod
    def iter_document_ids(self) -> Iterator[str]:
        """Every live document id, for reindexing."""

    def count_documents(self) -> int:
        """How many live documents the store holds (a reindex's progress bar). The default
        counts the ids; stores that can ask their database override it."""
        return sum(1 for _ in self.iter_document_ids())

    def get_document(self, doc_id: str) -> Fetched:
        found = self.get_documents([doc_id])
        try:
            return found[doc_id]
        except KeyError:
            raise DocumentNotFoundError(
                f"document {doc_id!r} not found in {self.data_source_type}/{self.data_source_name}"
            ) from None

    def iter_documents(self, chunk_size: int = 1000) -> Iterator[tuple[str, Document]]:
        """Every live (id, document), fetched in chunks."""
        chunk: list[str] = []
        for doc_id in self.iter_document_ids():
            chunk.append(doc_id)
            if len(chunk) >= chunk_size:
                yield from self._live(chunk)
                chunk = []
        if chunk:
            yield from self._live(chunk)

    def _live(self, ids: list[str]) -> Iterator[tuple[str, Document]]:
        found = self.get_documents(ids)
        for doc_id in ids:
            doc = found.get(doc_id)
            if isinstance(doc, dict):
                yield doc_id, doc

    def document_version(self, document: Document) -> int | None:
        """The document's version, to detect a read older than its stub (None: unknown)."""
        version = document.get("_version")
        if isinstance(version, int) and not isinstance(version, bool):
            return version
        return rev_number(document.get("_rev"))

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def rev_number(rev: object) -> int | None:
    """The generation number of a CouchDB-style revision ``"N-hash"``."""
    if isinstance(rev, str):
        head, _, _ = rev.partition("-")
        if head.isdigit():
            return int(head)
    return None
