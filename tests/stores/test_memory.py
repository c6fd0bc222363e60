"""The in-memory document store: versions, deletion, bulk get, iteration."""

from __future__ import annotations

import pytest

from changefeed.stores import DocumentDeleted, DocumentNotFoundError, MemoryDocumentStore


def test_save_bumps_version_and_returns_copies() -> None:
    store = MemoryDocumentStore("demo")
    assert store.save("a", {"n": 1}) == 1
    assert store.save("a", {"n": 2}) == 2
    doc = store.get_document("a")
    assert doc == {"_id": "a", "_version": 2, "n": 2}
    assert isinstance(doc, dict)
    doc["n"] = 99
    assert store.get_document("a") == {"_id": "a", "_version": 2, "n": 2}
    assert store.document_version(doc) == 2


def test_deleted_is_distinct_from_not_found() -> None:
    store = MemoryDocumentStore("demo")
    store.save("a", {})
    assert store.delete("a") == 2
    assert store.get_document("a") is DocumentDeleted
    assert not DocumentDeleted
    with pytest.raises(DocumentNotFoundError, match="'zzz' not found in memory/demo"):
        store.get_document("zzz")
    # Saving again revives it with a newer version.
    assert store.save("a", {"x": 1}) == 3
    assert store.get_document("a") == {"_id": "a", "_version": 3, "x": 1}


def test_bulk_get_and_iteration() -> None:
    store = MemoryDocumentStore("demo")
    for i in range(5):
        store.save(f"d{i}", {"i": i})
    store.delete("d3")
    found = store.get_documents(["d0", "d3", "missing", "d4"])
    assert set(found) == {"d0", "d3", "d4"}
    assert found["d3"] is DocumentDeleted
    assert list(store.iter_document_ids()) == ["d0", "d1", "d2", "d4"]
    assert [doc_id for doc_id, _ in store.iter_documents(chunk_size=2)] == ["d0", "d1", "d2", "d4"]
    assert len(store) == 4
