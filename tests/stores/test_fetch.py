"""Bulk fetching for a batch: once per store, deletions, not-found and stale reads."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from changefeed.change import Change, ChangeMeta
from changefeed.failures import FETCH, DependencyDownError, Failure, StaleReadError
from changefeed.stores.base import (
    DocumentDeleted,
    DocumentNotFoundError,
    DocumentStore,
    Fetched,
    UnknownDocumentStoreError,
)
from changefeed.stores.fetch import DocumentFetcher
from changefeed.stores.registry import DocumentStoreRegistry
from changefeed.testing.clock import FakeClock


class CountingStore(DocumentStore):
    """A fake store counting bulk calls and serving a scripted sequence of versions."""

    data_source_type = "memory"
    data_source_name = "count"

    def __init__(self, docs: dict[str, Fetched], fail: bool = False) -> None:
        self.docs = docs
        self.calls = 0
        self.fail = fail

    def get_documents(self, doc_ids: Iterable[str]) -> dict[str, Fetched]:
        self.calls += 1
        if self.fail:
            raise ConnectionError("store down")
        return {i: self.docs[i] for i in doc_ids if i in self.docs}

    def iter_document_ids(self) -> Iterator[str]:
        return iter(sorted(self.docs))


def _fetcher(store: DocumentStore, clock: FakeClock | None = None) -> DocumentFetcher:
    registry = DocumentStoreRegistry()
    registry.register(store)
    return DocumentFetcher(
        registry,
        stale_read_retries=2,
        stale_read_delay=0.01,
        clock=clock or FakeClock(),
    )


def _change(doc_id: str, **meta: object) -> Change:
    return Change("form", 0, 0, ChangeMeta(doc_id, "memory", "count", **meta))  # type: ignore[arg-type]


def test_one_bulk_call_sets_every_document() -> None:
    store = CountingStore({"a": {"n": 1}, "b": {"n": 2}})
    failures: list[Failure] = []
    ready = _fetcher(store).fetch([_change("a"), _change("b")], failures)
    assert store.calls == 1 and not failures
    assert [c.document for c in ready] == [{"n": 1}, {"n": 2}]


def test_deletions_are_fetched_in_the_same_bulk_call() -> None:
    store = CountingStore({"a": {"n": 1}, "b": DocumentDeleted})
    failures: list[Failure] = []
    changes = [_change("a"), _change("b", is_deletion=True), _change("c", is_deletion=True)]
    ready = _fetcher(store).fetch(changes, failures)
    assert store.calls == 1 and not failures
    assert {c.id: (c.deleted, c.document) for c in ready} == {
        "a": (False, {"n": 1}),
        "b": (True, None),  # the store says deleted
        "c": (True, None),  # the store does not know it: nothing live to keep
    }


def test_versionless_deletion_of_a_live_document_is_an_upsert_of_it() -> None:
    store = CountingStore({"a": {"n": 1}})
    ready = _fetcher(store).fetch([_change("a", is_deletion=True)], [])
    assert not ready[0].deleted and ready[0].document == {"n": 1}


def test_deletion_older_than_the_live_document_is_an_upsert_of_it() -> None:
    store = CountingStore({"a": {"_version": 3}, "b": {"_rev": "3-x"}, "c": {"n": 1}})
    changes = [
        _change("a", is_deletion=True, version=2),
        _change("b", is_deletion=True, document_rev="2-y"),
        _change("c", is_deletion=True, version=5),  # the store keeps no version: it decides
    ]
    ready = _fetcher(store).fetch(changes, [])
    assert [(c.id, c.deleted) for c in ready] == [("a", False), ("b", False), ("c", False)]
    assert ready[1].document == {"_rev": "3-x"}
    assert ready[0].metadata is not None and ready[0].metadata.is_deletion  # the stub as sent


def test_deletion_as_new_as_or_newer_than_the_live_document_is_applied() -> None:
    # a: a CouchDB soft delete (the stub names the very revision the store holds);
    # b: the store has not caught up with the deletion yet.
    soft = {"_rev": "3-x", "doc_type": "case-Deleted"}
    store = CountingStore({"a": soft, "b": {"_version": 1}})
    changes = [
        _change("a", is_deletion=True, document_rev="3-x"),
        _change("b", is_deletion=True, version=2),
    ]
    ready = _fetcher(store).fetch(changes, [])
    assert [(c.id, c.deleted, c.document) for c in ready] == [("a", True, None), ("b", True, None)]


def test_deletion_of_a_live_document_that_is_not_an_object_fails_like_an_update() -> None:
    store = CountingStore({"a": ["not", "an", "object"]})  # type: ignore[dict-item]
    failures: list[Failure] = []
    ready = _fetcher(store).fetch([_change("a", is_deletion=True)], failures)
    assert not ready and "not a JSON object" in str(failures[0].exception)


def test_unregistered_store_is_a_retryable_fetch_failure() -> None:
    failures: list[Failure] = []
    stub = ChangeMeta("a", "memory", "elsewhere")
    ready = _fetcher(CountingStore({})).fetch([Change("form", 0, 0, stub)], failures)
    assert not ready and isinstance(failures[0].exception, UnknownDocumentStoreError)
    assert failures[0].retryable


def test_change_that_has_its_document_is_not_fetched() -> None:
    store = CountingStore({"a": {"n": 1}})
    change = _change("a")
    change.set_document({"n": 2})
    ready = _fetcher(store).fetch([change], [])
    assert store.calls == 0 and ready[0].document == {"n": 2}


def test_store_reporting_deleted_marks_the_change_deleted() -> None:
    store = CountingStore({"a": DocumentDeleted})
    ready = _fetcher(store).fetch([_change("a")], [])
    assert ready[0].deleted and ready[0].document is None


def test_not_found_is_a_fetch_failure_of_that_document() -> None:
    store = CountingStore({"a": {"n": 1}})
    failures: list[Failure] = []
    ready = _fetcher(store).fetch([_change("a"), _change("gone")], failures)
    assert [c.id for c in ready] == ["a"]
    assert [(f.change.id, f.where) for f in failures] == [("gone", FETCH)]
    assert isinstance(failures[0].exception, DocumentNotFoundError)


def test_stale_read_is_retried_then_failed() -> None:
    store = CountingStore({"a": {"_version": 1}})
    failures: list[Failure] = []
    clock = FakeClock()
    ready = _fetcher(store, clock).fetch([_change("a", version=2)], failures)
    assert not ready and store.calls == 3 and clock.sleeps == [0.01, 0.01]
    assert isinstance(failures[0].exception, StaleReadError)


def test_store_failing_as_a_whole_is_a_dependency_failure() -> None:
    store = CountingStore({}, fail=True)
    try:
        _fetcher(store).fetch([_change("a")], [])
    except DependencyDownError as exc:
        assert "memory/count" in exc.where
    else:
        raise AssertionError("expected DependencyDownError")
