"""`DocumentStore.iter_document_chunks`, what a reindex reads: the default (ids listed, then
fetched) on the memory store, and the SQL store's one-query keyset pages on SQLite and
PostgreSQL. Every store must give the same answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from changefeed.stores.base import DocumentStore
from changefeed.stores.memory import MemoryDocumentStore
from changefeed.stores.sql import SQLDocumentStore


@pytest.fixture(params=["memory", "sqlite", "sqlite-memory", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DocumentStore]:
    s: DocumentStore
    if request.param == "memory":
        s = MemoryDocumentStore("docs")
    else:
        url = {
            "sqlite": f"sqlite:///{tmp_path}/docs.db",
            "sqlite-memory": "sqlite://",
        }.get(request.param) or request.getfixturevalue("pg_url")
        s = SQLDocumentStore(url, "documents", data_source_name="docs")
        s.create()
    yield s
    s.close()


def save(store: DocumentStore, doc_id: str, doc: dict[str, object]) -> None:
    store.save(doc_id, doc)  # type: ignore[attr-defined]


def fill(store: DocumentStore, n: int) -> list[str]:
    ids = [f"d{i:04d}" for i in range(n)]
    for i, doc_id in enumerate(reversed(ids)):  # written out of order: read in id order
        save(store, doc_id, {"i": n - 1 - i, "nested": {"a": [1, 2]}})
    return ids


def test_chunks_hold_every_live_document_in_id_order(store: DocumentStore) -> None:
    ids = fill(store, 25)
    store.delete("d0003")  # type: ignore[attr-defined]
    store.delete("d0024")  # type: ignore[attr-defined]
    live = [i for i in ids if i not in ("d0003", "d0024")]
    chunks = list(store.iter_document_chunks(None, 10))
    assert [doc_id for chunk in chunks for doc_id, _ in chunk] == live
    assert all(1 <= len(chunk) <= 10 for chunk in chunks)
    # the same documents, with the same _id and _version, as a fetch by id gives
    fetched = store.get_documents(live)
    assert {doc_id: doc for chunk in chunks for doc_id, doc in chunk} == fetched
    assert fetched["d0007"] == {"_id": "d0007", "_version": 1, "i": 7, "nested": {"a": [1, 2]}}
    # iter_documents is built on it
    assert list(store.iter_documents(7)) == [pair for chunk in chunks for pair in chunk]


def test_after_id_resumes_after_the_last_chunk(store: DocumentStore) -> None:
    ids = fill(store, 23)
    first = next(store.iter_document_chunks(None, 10))
    assert [doc_id for doc_id, _ in first] == ids[:10]
    rest = list(store.iter_document_chunks(first[-1][0], 10))
    assert [len(chunk) for chunk in rest] == [10, 3]
    assert [doc_id for chunk in rest for doc_id, _ in chunk] == ids[10:]
    # an id that is gone (or never was) still resumes by order
    assert [d for c in store.iter_document_chunks("d0014x", 100) for d, _ in c] == ids[15:]
    assert list(store.iter_document_chunks(ids[-1], 10)) == []


def test_exact_multiple_and_empty_store(store: DocumentStore) -> None:
    assert list(store.iter_document_chunks(None, 5)) == []
    fill(store, 10)
    assert [len(c) for c in store.iter_document_chunks(None, 5)] == [5, 5]
    with pytest.raises(ValueError, match="chunk_size"):
        next(store.iter_document_chunks(None, 0))


def test_a_document_saved_again_is_read_at_its_new_version(store: DocumentStore) -> None:
    fill(store, 3)
    save(store, "d0001", {"i": "again"})
    docs = dict(pair for chunk in store.iter_document_chunks() for pair in chunk)
    assert docs["d0001"] == {"_id": "d0001", "_version": 2, "i": "again"}


def test_in_memory_sqlite_is_read_in_the_callers_thread(tmp_path: Path) -> None:
    """One connection per thread: a reader thread would see another, empty database."""
    assert SQLDocumentStore("sqlite://", "t").thread_safe_reads is False
    assert SQLDocumentStore(f"sqlite:///{tmp_path}/d.db", "t").thread_safe_reads is True
    assert MemoryDocumentStore("m").thread_safe_reads is True


def test_default_reads_a_chunk_whose_documents_went_meanwhile() -> None:
    """The default lists ids, then fetches them: documents deleted in between are left out,
    and a chunk left empty is not yielded."""

    class Vanishing(MemoryDocumentStore):
        def get_documents(self, doc_ids):  # type: ignore[no-untyped-def]
            found = super().get_documents(doc_ids)
            return {k: v for k, v in found.items() if not k.startswith("gone")}

    store = Vanishing("docs")
    for doc_id in ("a1", "a2", "gone1", "gone2", "z1"):
        store.save(doc_id, {})
    chunks = list(store.iter_document_chunks(None, 2))
    assert [[d for d, _ in c] for c in chunks] == [["a1", "a2"], ["z1"]]
