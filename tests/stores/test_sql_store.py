"""The SQL document store on SQLite and on PostgreSQL (our own test cluster)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from changefeed.db import make_engine
from changefeed.identifiers import InvalidIdentifierError
from changefeed.stores import DocumentDeleted, DocumentNotFoundError, SQLDocumentStore


@pytest.fixture
def store(db_url: str) -> Iterator[SQLDocumentStore]:
    # make_engine: WAL and synchronous=NORMAL on SQLite, as our own state uses.
    s = SQLDocumentStore(make_engine(db_url), "documents", data_source_name="docs")
    s.create()
    yield s
    s.close()


def test_save_bumps_version(store: SQLDocumentStore) -> None:
    assert store.save("a", {"name": "Ann", "tags": [1, 2]}) == 1
    assert store.save("a", {"name": "Anna"}) == 2
    doc = store.get_document("a")
    assert doc == {"_id": "a", "_version": 2, "name": "Anna"}
    assert isinstance(doc, dict) and store.document_version(doc) == 2
    assert (store.data_source_type, store.data_source_name) == ("sql", "docs")


def test_delete_leaves_tombstone_distinct_from_not_found(store: SQLDocumentStore) -> None:
    store.save("a", {"n": 1})
    assert store.delete("a") == 2
    assert store.get_document("a") is DocumentDeleted
    with pytest.raises(DocumentNotFoundError):
        store.get_document("never")
    assert store.save("a", {"n": 3}) == 3
    assert store.get_document("a") == {"_id": "a", "_version": 3, "n": 3}


def test_bulk_get_across_chunks(store: SQLDocumentStore) -> None:
    for i in range(520):
        store.save(f"d{i:04d}", {"i": i})
    store.delete("d0007")
    ids = [f"d{i:04d}" for i in range(520)] + ["missing", "d0001"]
    found = store.get_documents(ids)
    assert len(found) == 520
    assert found["d0007"] is DocumentDeleted
    assert found["d0519"] == {"_id": "d0519", "_version": 1, "i": 519}
    assert "missing" not in found


def test_bulk_get_leaves_the_pooled_connection_transactional(store: SQLDocumentStore) -> None:
    """A bulk get reads without a transaction (nothing to roll back afterwards); the pooled
    connection it used must come back as it was, or a later save would commit statement by
    statement."""
    store.save("a", {"n": 1})
    assert store.get_documents(["a"])["a"]["n"] == 1
    with store.engine.connect() as conn:
        if store.engine.dialect.name == "postgresql":
            assert conn.connection.driver_connection.autocommit is False  # type: ignore[union-attr]
        conn.execute(store.table.update().values(version=99))
        conn.rollback()
    assert store.get_documents(["a"])["a"]["_version"] == 1


def test_iterate_live_ids_and_documents(store: SQLDocumentStore) -> None:
    for i in range(7):
        store.save(f"k{i}", {"i": i})
    store.delete("k2")
    assert list(store.iter_document_ids()) == ["k0", "k1", "k3", "k4", "k5", "k6"]
    docs = list(store.iter_documents(chunk_size=4))
    assert [d for d, _ in docs] == ["k0", "k1", "k3", "k4", "k5", "k6"]
    assert docs[-1][1]["i"] == 6


def test_create_is_idempotent_and_shares_table(db_url: str, store: SQLDocumentStore) -> None:
    store.save("x", {"v": 1})
    other = SQLDocumentStore(sa.create_engine(db_url), "documents")
    other.create()
    assert other.get_document("x") == {"_id": "x", "_version": 1, "v": 1}
    assert other.data_source_name == "documents"
    other.close()


@pytest.mark.parametrize("bad", ["bad-name", "x; drop table y", "1abc", ""])
def test_table_name_validated(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidIdentifierError):
        SQLDocumentStore(f"sqlite:///{tmp_path}/d.db", bad)


def test_a_stored_value_that_is_not_an_object_is_returned_as_it_is(
    store: SQLDocumentStore,
) -> None:
    """Written by the application straight into the table: a list, a string, a number. The
    store hands them over unchanged (the pillow queues them as invalid documents) instead
    of making them a dict or failing the whole bulk read; a reindex skips them."""
    store.save("ok", {"n": 1})
    cast = "CAST(:d AS jsonb)" if store.engine.dialect.name == "postgresql" else ":d"
    insert = sa.text(
        f"INSERT INTO documents (id, document, version, deleted) VALUES (:i, {cast}, 1, false)"
    )
    with store.engine.begin() as conn:
        for doc_id, text in (("list", "[1, 2]"), ("text", '"words"'), ("number", "42")):
            conn.execute(insert, {"i": doc_id, "d": text})
    found = store.get_documents(["ok", "list", "text", "number"])
    assert found["ok"] == {"_id": "ok", "_version": 1, "n": 1}
    assert (found["list"], found["text"], found["number"]) == ([1, 2], "words", 42)
    chunks = list(store.iter_document_chunks(chunk_size=2))
    assert [doc_id for chunk in chunks for doc_id, _ in chunk] == ["ok"]
