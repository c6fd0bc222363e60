"""A document store on SQLAlchemy Core: one table of (id, JSON document, version, deleted).

Works on SQLite and PostgreSQL. Every save bumps ``version``, which stubs carry so pillows
can tell a stale read (document older than its stub) from a current one. Deletions leave a
tombstone row so "deleted" stays distinct from "never existed".
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from changefeed.db import create_tables, make_engine
from changefeed.identifiers import sql_identifier
from changefeed.stores.base import Document, DocumentDeleted, DocumentStore, Fetched

_CHUNK = 500
_PG_CHUNK = 5000


def _load_json(text: str | bytes) -> Any:
    """orjson, falling back to the stdlib for what it rejects but ``json.dumps`` writes
    (NaN, Infinity, integers beyond 64 bits), so every stored document still loads."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _document(doc_id: str, text: str | bytes | float | None, version: int) -> Any:
    """A stored row as a document: its JSON with ``_id`` and ``_version``. A value that is
    not a JSON object (a list, a string, a number) is returned as it is, so the pillow queues
    it as an invalid document: turned into a dict it would be processed as if it were one,
    and failing the whole bulk read would look like the store being down. (SQLite gives a
    bare JSON number back as a number: the column's type affinity converted it.)"""
    if isinstance(text, int | float):
        doc: Any = text
    else:
        doc = _load_json(text) if text is not None else None
        if doc is None:  # no document stored: an empty one, as always
            doc = {}
    if type(doc) is dict:
        doc.setdefault("_id", doc_id)
        doc["_version"] = version
    return doc


def _json_type() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


class SQLDocumentStore(DocumentStore):
    def __init__(
        self,
        engine: sa.Engine | str,
        table: str,
        *,
        data_source_name: str | None = None,
        data_source_type: str = "sql",
        schema: str | None = None,
    ) -> None:
        self.engine = make_engine(engine)
        self.data_source_type = data_source_type
        self.data_source_name = data_source_name or table
        self.table = sa.Table(
            sql_identifier(table, "table name"),
            sa.MetaData(schema=sql_identifier(schema, "schema") if schema else None),
            sa.Column("id", sa.String(255), primary_key=True),
            sa.Column("document", _json_type(), nullable=True),
            sa.Column("version", sa.BigInteger, nullable=False, default=1),
            sa.Column("deleted", sa.Boolean, nullable=False, default=False),
        )
        self._upsert_stmt: Any = None
        self._fetch_stmt: tuple[str, bool] | None = None
        # An in-memory SQLite database is one connection per thread (or one shared by all):
        # another thread would read another database, or interleave with our transactions.
        self.thread_safe_reads = not isinstance(
            self.engine.pool, sa.pool.SingletonThreadPool | sa.pool.StaticPool
        )

    def create(self) -> None:
        """Create the table if it is missing."""
        create_tables(self.engine, self.table.metadata)

    def _upsert_statement(self) -> Any:
        """Built once: statement construction costs more than the SQLite write itself."""
        if self._upsert_stmt is None:
            t = self.table
            dialect = self.engine.dialect.name
            if dialect not in ("postgresql", "sqlite"):
                raise NotImplementedError(
                    f"SQLDocumentStore supports SQLite and PostgreSQL, not {dialect}"
                )
            ins = postgresql.insert(t) if dialect == "postgresql" else sqlite.insert(t)
            self._upsert_stmt = (
                ins.values(
                    id=sa.bindparam("id"),
                    document=sa.bindparam("document", type_=t.c.document.type),
                    version=1,
                    deleted=sa.bindparam("deleted"),
                )
                .on_conflict_do_update(
                    index_elements=[t.c.id],
                    set_={
                        "document": ins.excluded.document,
                        "deleted": ins.excluded.deleted,
                        "version": t.c.version + 1,
                    },
                )
                .returning(t.c.version)
            )
        return self._upsert_stmt

    def _upsert(self, doc_id: str, document: dict[str, Any] | None, deleted: bool) -> int:
        stmt = self._upsert_statement()
        with self.engine.begin() as conn:
            params = {"id": doc_id, "document": document, "deleted": deleted}
            return int(conn.execute(stmt, params).scalar_one())

    def save(self, doc_id: str, document: dict[str, Any]) -> int:
        """Insert or replace a document; returns its new version."""
        return self._upsert(doc_id, document, False)

    def delete(self, doc_id: str) -> int:
        """Mark a document deleted; returns its new version."""
        return self._upsert(doc_id, None, True)

    def _fetch_sql(self) -> tuple[str, bool]:
        """The bulk fetch as driver SQL, built once: (statement, PostgreSQL?).

        The document comes back as JSON text, parsed here with orjson: SQLAlchemy's row
        processing and the driver's stdlib JSON loader cost more than the query itself.
        PostgreSQL gets one ``id = ANY(array)`` parameter per query, much cheaper to send
        and plan than an IN list of hundreds of parameters; SQLite gets a ``?`` list.
        """
        if self._fetch_stmt is None:
            dialect = self.engine.dialect
            table = dialect.identifier_preparer.format_table(self.table)
            pg = dialect.name == "postgresql"
            if pg:
                sql = f"SELECT id, document::text, version, deleted FROM {table} WHERE id = ANY(%s)"
            else:
                sql = f"SELECT id, document, version, deleted FROM {table} WHERE id IN "
            self._fetch_stmt = (sql, pg)
        return self._fetch_stmt

    def get_documents(self, doc_ids: Iterable[str]) -> dict[str, Fetched]:
        ids = list(dict.fromkeys(doc_ids))
        out: dict[str, Fetched] = {}
        if not ids:
            return out
        if self.engine.dialect.name not in ("postgresql", "sqlite"):
            return self._get_documents_generic(ids)
        sql, pg = self._fetch_sql()
        size = _PG_CHUNK if pg else _CHUNK
        deleted_marker = DocumentDeleted
        with self.engine.connect() as conn:
            if pg and len(ids) <= size:
                # one statement, its own snapshot: no transaction to roll back afterwards
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            cursor = conn.connection.cursor()
            try:
                for start in range(0, len(ids), size):
                    chunk = ids[start : start + size]
                    if pg:
                        cursor.execute(sql, (chunk,))
                    else:
                        cursor.execute(f"{sql}({','.join('?' * len(chunk))})", chunk)
                    for doc_id, text, version, deleted in cursor.fetchall():
                        if deleted:
                            out[doc_id] = deleted_marker
                            continue
                        out[doc_id] = _document(doc_id, text, version)
            finally:
                cursor.close()
        return out

    def _get_documents_generic(self, ids: list[str]) -> dict[str, Fetched]:
        """Through SQLAlchemy's types, for dialects without a fast path."""
        out: dict[str, Fetched] = {}
        t = self.table
        query = sa.select(t.c.id, t.c.document, t.c.version, t.c.deleted)
        with self.engine.connect() as conn:
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                for doc_id, document, version, deleted in conn.execute(
                    query.where(t.c.id.in_(chunk))
                ):
                    if deleted:
                        out[doc_id] = DocumentDeleted
                    else:
                        doc = dict(document or {})
                        doc.setdefault("_id", doc_id)
                        doc["_version"] = version
                        out[doc_id] = doc
        return out

    def count_documents(self) -> int:
        t = self.table
        query = sa.select(sa.func.count()).select_from(t).where(t.c.deleted.is_(False))
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def _chunk_sql(self) -> tuple[str, str]:
        """The keyset page as driver SQL: (first page, page after an id). The document
        comes back as text for orjson, as in `get_documents`."""
        dialect = self.engine.dialect
        table = dialect.identifier_preparer.format_table(self.table)
        if dialect.name == "postgresql":
            head = f"SELECT id, document::text, version FROM {table} WHERE NOT deleted"
            return f"{head} ORDER BY id LIMIT %s", f"{head} AND id > %s ORDER BY id LIMIT %s"
        head = f"SELECT id, document, version FROM {table} WHERE deleted = 0"
        return f"{head} ORDER BY id LIMIT ?", f"{head} AND id > ? ORDER BY id LIMIT ?"

    def iter_document_chunks(
        self, after_id: str | None = None, chunk_size: int = 1000
    ) -> Iterator[list[tuple[str, Document]]]:
        """Ids and documents in one keyset query per chunk (``id > last ORDER BY id LIMIT
        n`` along the primary key), so a reindex reads each row once instead of listing ids
        and fetching them again. Each page is a short query of its own, not a cursor held
        open for the whole reindex: no transaction (and no snapshot holding back vacuum)
        lives longer than one chunk. Resuming compares ids in the database, so it follows
        the database's own order whatever its collation."""
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        if self.engine.dialect.name not in ("postgresql", "sqlite"):
            yield from super().iter_document_chunks(after_id, chunk_size)
            return
        first, after = self._chunk_sql()
        last = after_id
        while True:
            with self.engine.connect() as conn:
                cursor = conn.connection.cursor()
                try:
                    if last is None:
                        cursor.execute(first, (chunk_size,))
                    else:
                        cursor.execute(after, (last, chunk_size))
                    rows = cursor.fetchall()
                finally:
                    cursor.close()
            if not rows:
                return
            # Live documents only, as the default's `_live`: what is not a JSON object
            # is no document to rebuild from (the pillow queues it when it changes).
            docs = ((doc_id, _document(doc_id, text, version)) for doc_id, text, version in rows)
            chunk = [(doc_id, doc) for doc_id, doc in docs if type(doc) is dict]
            if chunk:
                yield chunk
            if len(rows) < chunk_size:
                return
            last = rows[-1][0]

    def iter_document_ids(self) -> Iterator[str]:
        """Live ids in id order, paged by key so a long reindex holds no big result set."""
        t = self.table
        last: str | None = None
        while True:
            query = sa.select(t.c.id).where(t.c.deleted.is_(False)).order_by(t.c.id).limit(5000)
            if last is not None:
                query = query.where(t.c.id > last)
            with self.engine.connect() as conn:
                ids = [row[0] for row in conn.execute(query)]
            if not ids:
                return
            yield from ids
            last = ids[-1]

    def close(self) -> None:
        self.engine.dispose()
