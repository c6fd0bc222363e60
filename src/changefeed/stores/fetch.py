"""Bulk document fetching for a batch of changes, with stale-read handling.

A stub announces a version (``version`` or the generation of ``document_rev``); a store
replica may still hold an older one. Such a read is retried a few times after a short wait,
and if still old the change is failed as stale (retried later from the error queue): a
processor never sees a document older than its change.

The store decides what a change means: deletion stubs are fetched in the same bulk call, and
a deletion whose document is live in the store (newer than the stub, or with no version to
compare) is processed as an upsert of that document (see `DocumentFetcher._late_deletion`),
so a late, reordered or versionless deletion never removes a live document's outputs, and
the last change of a document in a batch stands for all of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from changefeed.change import Change, InvalidChangeError
from changefeed.clock import SYSTEM_CLOCK, Clock
from changefeed.failures import (
    FETCH,
    INVALID_STUB,
    DependencyDownError,
    Failure,
    InvalidDocumentError,
    StaleReadError,
)
from changefeed.lifecycle import StopFlag
from changefeed.stores.base import DocumentDeleted, DocumentNotFoundError, DocumentStore, rev_number
from changefeed.stores.registry import DocumentStoreRegistry


class DocumentFetcher:
    """Fetches the documents of a batch once per store and hands them to the changes."""

    def __init__(
        self,
        stores: DocumentStoreRegistry,
        *,
        stale_read_retries: int = 2,
        stale_read_delay: float = 0.05,
        clock: Clock = SYSTEM_CLOCK,
        wake: StopFlag | None = None,
    ) -> None:
        self.stores = stores
        self.stale_read_retries = stale_read_retries
        self.stale_read_delay = stale_read_delay
        self.clock = clock
        self.wake = wake
        """Cuts a stale-read wait short (the pillow's stop request)."""

    def fetch(self, changes: Iterable[Change], failures: list[Failure]) -> list[Change]:
        """The changes ready for processors (documents set, deletions marked); the others
        are appended to ``failures``. Raises `DependencyDownError` when a store fails as a
        whole (it is then down, not the documents bad)."""
        ready: list[Change] = []
        by_store: dict[int, tuple[DocumentStore, list[Change]]] = {}
        for change in changes:
            meta = change.metadata
            assert meta is not None
            if change.has_document:
                ready.append(change)
                continue
            try:
                store = self.stores.for_change(meta)
            except LookupError as exc:
                failures.append(Failure(change, exc, True, FETCH))
                continue
            if meta.document_rev is not None and rev_number(meta.document_rev) is None:
                bad = InvalidChangeError(
                    f"document_rev {meta.document_rev!r} is not a revision of the form N-hash"
                )
                failures.append(Failure(change, bad, False, INVALID_STUB))
                continue
            by_store.setdefault(id(store), (store, []))[1].append(change)
        for store, group in by_store.values():
            self._fetch_from(store, group, ready, failures)
        return ready

    @staticmethod
    def _late_deletion(store: DocumentStore, change: Change, doc: object) -> bool:
        """Whether a deletion stub is late: the store holds its document live, at a newer
        version than the stub announces (re-created, or the stub arrived out of order) or
        with no version to compare (the stub carries none, as CommCare HQ's SQL stubs; or
        the store keeps none). The live document is then processed instead: an upsert,
        which is what processing every change of the document in order ends with.

        A stub announcing the stored version itself describes that very revision as a
        deletion (a CouchDB soft delete keeps the document, renamed ``...-Deleted``), and
        one announcing a newer version is a deletion the store has not caught up with yet:
        both are applied."""
        if not isinstance(doc, dict):
            return doc is not None and doc is not DocumentDeleted  # live, if not an object
        wanted = wanted_version(change)
        if wanted is None:
            return True
        have = store.document_version(doc)
        return have is None or have > wanted

    def _fetch_from(
        self,
        store: DocumentStore,
        pending: list[Change],
        ready: list[Change],
        failures: list[Failure],
    ) -> None:
        where = f"{store.data_source_type}/{store.data_source_name}"
        for attempt in range(self.stale_read_retries + 1):
            if attempt:
                self.clock.sleep(self.stale_read_delay, self.wake)
            try:
                found = store.get_documents([c.id for c in pending])
            except Exception as exc:  # noqa: BLE001 - the store as a whole is failing
                raise DependencyDownError(f"{FETCH} {where}", exc) from exc
            stale: list[Change] = []
            for change in pending:
                doc = found.get(change.id)
                if change.deleted:
                    if not self._late_deletion(store, change, doc):
                        change.set_document(None)
                        ready.append(change)
                        continue
                    change.deleted = False  # the store decides: an upsert of what it holds
                if doc is None:
                    missing = DocumentNotFoundError(f"document {change.id!r} not found in {where}")
                    failures.append(Failure(change, missing, True, FETCH))
                elif doc is DocumentDeleted:
                    change.deleted = True
                    change.set_document(None)
                    ready.append(change)
                elif not isinstance(doc, dict):
                    bad = InvalidDocumentError(
                        f"document {change.id!r} in {where} is a {type(doc).__name__}, "
                        "not a JSON object"
                    )
                    failures.append(Failure(change, bad, True, FETCH))
                elif is_stale(store, change, doc):
                    stale.append(change)
                else:
                    change.set_document(doc)
                    ready.append(change)
            pending = stale
            if not pending:
                return
        for change in pending:
            meta = change.metadata
            assert meta is not None
            error = StaleReadError(
                f"document {change.id!r} is older than its change "
                f"(version={meta.version} rev={meta.document_rev})"
            )
            failures.append(Failure(change, error, True, FETCH))


def wanted_version(change: Change) -> int | None:
    """The version a stub announces (``version``, else the generation of its revision)."""
    meta = change.metadata
    assert meta is not None
    return meta.version if meta.version is not None else rev_number(meta.document_rev)


def is_stale(store: DocumentStore, change: Change, doc: dict[str, Any]) -> bool:
    """True when the store's document is older than the version the stub announced."""
    wanted = wanted_version(change)
    if wanted is None:
        return False
    have = store.document_version(doc)
    return have is not None and have < wanted
