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
    thread_safe_reads: bool = True
    """Whether reads may run in another thread than the caller's, concurrently with the
    caller's own work: a reindex reads the next chunk in a thread of its own while it
    processes the one in hand. A store bound to one thread's connection says False, and is
    then read in turn."""

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

    def iter_document_chunks(
        self, after_id: str | None = None, chunk_size: int = 1000
    ) -> Iterator[list[tuple[str, Document]]]:
        """Every live (id, document), in lists of at most ``chunk_size``, for a reindex.

        ``after_id`` resumes after the last id of a chunk an earlier call yielded: only ids
        greater than it are read. That is right when the store lists ids in ascending order
        (the reindex checks the order it sees and reads an out-of-order store again from the
        start instead of resuming). A chunk whose documents were all deleted between listing
        and fetching is not yielded.

        The default lists ids with `iter_document_ids` and fetches each chunk with
        `get_documents` (two reads per chunk); stores that can read ids and documents in one
        ordered query override it.
        """
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        ids: list[str] = []
        for doc_id in self.iter_document_ids():
            if after_id is not None and doc_id <= after_id:
                continue
            ids.append(doc_id)
            if len(ids) >= chunk_size:
                if live := self._live(ids):
                    yield live
                ids = []
        if ids and (live := self._live(ids)):
            yield live

    def iter_documents(self, chunk_size: int = 1000) -> Iterator[tuple[str, Document]]:
        """Every live (id, document), read in chunks (`iter_document_chunks`)."""
        for chunk in self.iter_document_chunks(None, chunk_size):
            yield from chunk

    def _live(self, ids: list[str]) -> list[tuple[str, Document]]:
        """The documents of ``ids`` that are live, in the order of ``ids``."""
        found = self.get_documents(ids)
        out: list[tuple[str, Document]] = []
        for doc_id in ids:
            doc = found.get(doc_id)
            if isinstance(doc, dict):
                out.append((doc_id, doc))
        return out

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
