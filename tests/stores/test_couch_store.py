"""The CouchDB document store against pouchdb-server: bulk get tells live, deleted and
missing apart; reindex pages through every live id."""

from __future__ import annotations

import httpx
import pytest

from changefeed.stores import DocumentDeleted, DocumentNotFoundError
from changefeed.stores.couch import CouchDocumentStore
from changefeed.stores.fetch import is_stale
from changefeed.stores.registry import DocumentStoreRegistry


def _bulk(db_url: str, docs: list[dict[str, object]]) -> list[dict[str, str]]:
    response = httpx.post(f"{db_url}/_bulk_docs", json={"docs": docs})
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


def _delete(db_url: str, doc_id: str) -> None:
    rev = httpx.get(f"{db_url}/{doc_id}").json()["_rev"]
    httpx.delete(f"{db_url}/{doc_id}", params={"rev": rev}).raise_for_status()


def test_bulk_get_distinguishes_live_deleted_missing(couch_db: str) -> None:
    _bulk(couch_db, [{"_id": "a", "doc_type": "case", "n": 1}, {"_id": "b", "doc_type": "form"}])
    _delete(couch_db, "b")
    store = CouchDocumentStore(couch_db, chunk_size=2)
    found = store.get_documents(["a", "b", "nope", "a"])
    assert set(found) == {"a", "b"}
    doc = found["a"]
    assert isinstance(doc, dict) and doc["n"] == 1 and doc["_rev"].startswith("1-")
    assert found["b"] is DocumentDeleted
    assert store.get_document("b") is DocumentDeleted
    with pytest.raises(DocumentNotFoundError, match="nope"):
        store.get_document("nope")
    assert isinstance(doc, dict) and store.document_version(doc) == 1
    assert store.data_source_type == "couch"
    assert store.data_source_name == couch_db.rsplit("/", 1)[1]
    store.close()


def test_iter_document_ids_pages_and_skips_deleted_and_design(couch_db: str) -> None:
    ids = [f"doc{i:03d}" for i in range(25)]
    _bulk(couch_db, [{"_id": i, "doc_type": "case"} for i in ids] + [{"_id": "_design/v"}])
    _delete(couch_db, "doc010")
    store = CouchDocumentStore(couch_db, page_size=4)
    live = [i for i in ids if i != "doc010"]
    assert list(store.iter_document_ids()) == live
    assert [doc_id for doc_id, _ in store.iter_documents(chunk_size=7)] == live
    store.close()


def test_factory_makes_a_store_per_database(couchdb_url: str, couch_db: str) -> None:
    registry = DocumentStoreRegistry()
    registry.register_factory("couch", CouchDocumentStore.factory(couchdb_url))
    name = couch_db.rsplit("/", 1)[1]
    _bulk(couch_db, [{"_id": "x", "doc_type": "case"}])
    store = registry.get("couch", name)
    assert isinstance(store, CouchDocumentStore)
    assert store is registry.get("couch", name)
    doc = store.get_document("x")
    assert isinstance(doc, dict) and doc["_id"] == "x"
    registry.close()


def test_stale_read_detected_from_rev(couch_db: str) -> None:
    """Pillows compare the stub's rev generation with the fetched document's ``_rev``."""
    _bulk(couch_db, [{"_id": "s", "doc_type": "case"}])
    store = CouchDocumentStore(couch_db)
    doc = store.get_document("s")
    assert isinstance(doc, dict)
    from changefeed.change import Change, ChangeMeta

    change = Change(
        "case", 0, 0, ChangeMeta("s", "couch", store.data_source_name, document_rev="2-abc")
    )
    assert is_stale(store, change, doc)
    store.close()


def test_bad_urls_and_missing_database(couchdb_url: str) -> None:
    with pytest.raises(ValueError, match="no database name"):
        CouchDocumentStore(couchdb_url)
    with pytest.raises(ValueError, match="invalid CouchDB database name"):
        CouchDocumentStore(f"{couchdb_url}/Bad")
    from changefeed.couchdb import CouchError

    store = CouchDocumentStore(f"{couchdb_url}/does_not_exist")
    with pytest.raises(CouchError, match="HTTP 404"):
        store.get_documents(["a"])
    store.close()
