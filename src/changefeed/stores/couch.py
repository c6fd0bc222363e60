"""A document store on a CouchDB database, over its HTTP API with httpx.

Bulk gets use ``POST _all_docs`` with ``keys`` and ``include_docs``, which tells the three
cases apart in one request: a live document (``doc``), a deleted one (``value.deleted``,
returned as `DocumentDeleted`) and one that never existed (``error: not_found``, absent from
the result). Reindexing pages through ``_all_docs`` by key, which never lists deleted
documents, and skips design documents (they hold views, not data).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson

from changefeed.extras import MissingExtraError

try:
    import httpx
except ImportError as exc:
    raise MissingExtraError("couchdb", exc) from exc

from changefeed.couchdb import CouchDatabase, as_database, check_response
from changefeed.stores.base import DocumentDeleted, DocumentStore, Fetched


class CouchDocumentStore(DocumentStore):
    """Documents of one CouchDB database; ``data_source_name`` defaults to the db name."""

    def __init__(
        self,
        db: CouchDatabase | str,
        *,
        data_source_name: str | None = None,
        data_source_type: str = "couch",
        chunk_size: int = 1000,
        page_size: int = 5000,
        timeout: float = 60.0,
        client: httpx.Client | None = None,
    ) -> None:
        if chunk_size < 1 or page_size < 1:
            raise ValueError("chunk_size and page_size must be at least 1")
        self.db = as_database(db)
        self.data_source_type = data_source_type
        self.data_source_name = data_source_name or self.db.name
        self.chunk_size = chunk_size
        self.page_size = page_size
        self._client = client or self.db.client(timeout)
        self._own_client = client is None

    @classmethod
    def factory(cls, server_url: str, **options: Any) -> Callable[[str], CouchDocumentStore]:
        """A registry factory making one store per database name on one server:
        ``app.document_stores.register_factory("couch", CouchDocumentStore.factory(url))``."""

        def make(db_name: str) -> CouchDocumentStore:
            return cls(CouchDatabase(server_url, db_name), **options)

        return make

    def get_documents(self, doc_ids: Iterable[str]) -> dict[str, Fetched]:
        ids = list(dict.fromkeys(doc_ids))
        out: dict[str, Fetched] = {}
        for start in range(0, len(ids), self.chunk_size):
            chunk = ids[start : start + self.chunk_size]
            response = self._client.post(
                f"{self.db.path}/_all_docs",
                params={"include_docs": "true"},
                content=orjson.dumps({"keys": chunk}),
                headers={"Content-Type": "application/json"},
            )
            check_response(self.db, response)
            for row in orjson.loads(response.content)["rows"]:
                if "error" in row:  # not_found: never existed (or purged)
                    continue
                value = row.get("value") or {}
                doc = row.get("doc")
                if value.get("deleted"):
                    out[row["key"]] = DocumentDeleted
                elif isinstance(doc, dict):
                    out[row["key"]] = doc
        return out

    def iter_document_ids(self) -> Iterator[str]:
        """Live ids in key order, one ``_all_docs`` page at a time (resuming after the last
        key seen, which stays correct when that document is deleted meanwhile)."""
        last: str | None = None
        while True:
            params = {"limit": str(self.page_size + (last is not None))}
            if last is not None:
                params["startkey"] = orjson.dumps(last).decode()
            response = self._client.get(f"{self.db.path}/_all_docs", params=params)
            check_response(self.db, response)
            rows = orjson.loads(response.content)["rows"]
            if rows and rows[0]["id"] == last:
                rows = rows[1:]
            if not rows:
                return
            for row in rows:
                if not row["id"].startswith("_design/"):
                    yield row["id"]
            last = rows[-1]["id"]

    def close(self) -> None:
        if self._own_client:
            self._client.close()
