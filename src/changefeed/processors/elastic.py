"""Keeps an Elasticsearch index in sync: one bulk request per batch, guarded by versions.

Every write carries an external version (from the stub, or from the document), so a replayed
or late change can never overwrite newer data: Elasticsearch answers 409 and we count that as
done. The pillow writes through an alias; `bootstrap` creates the concrete index
``<alias>_<version or settings hash>`` with its settings and mappings and points the alias at
it, so a later reindex can build a new index and swap the alias.

Per-document rejections (a mapping conflict) come back as `ChangeFailure` while the rest of the
batch is indexed. Connection errors and 429/5xx answers are retried with bounded backoff; if
they persist the processor raises `SinkUnavailableError` and the pillow backs off.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout
from elasticsearch import ApiError, BadRequestError, Elasticsearch

from changefeed.change import Change
from changefeed.errors import bounded
from changefeed.failures import DocumentError
from changefeed.identifiers import InvalidValueError, offset
from changefeed.processors.backoff import Backoff, SinkRetrier
from changefeed.processors.base import BulkProcessor, ChangeFailure, OutputDrift
from changefeed.stores.base import rev_number

log = logging.getLogger("changefeed.processors.elastic")

Document = dict[str, Any]
Transform = Callable[[Document], "Document | None"]
VersionFunc = Callable[[Change], "int | None"]

RETRY_STATUSES = frozenset({429, 502, 503, 504})
"""Answers that mean "not now" (overloaded, restarting): retried, never blamed on a document."""

METADATA_FIELDS = frozenset(
    {
        "_id",
        "_index",
        "_source",
        "_routing",
        "_version",
        "_seq_no",
        "_primary_term",
        "_type",
        "_ignored",
        "_field_names",
        "_tier",
        "_doc_count",
        "_nested_path",
        "_data_stream_timestamp",
    }
)
"""Top-level fields Elasticsearch refuses inside a document body; dropped before indexing."""

VERSION_TYPES = ("external", "external_gte")
_INVALID_INDEX_CHARS = re.compile(r'[\\/*?"<>| ,#:A-Z]')


class ElasticBootstrapError(RuntimeError):
    """The index or alias cannot be set up as configured."""


class ElasticDocumentError(RuntimeError):
    """Elasticsearch rejected one document (e.g. a value that does not fit the mapping)."""

    def __init__(self, document_id: str, status: int, error: object) -> None:
        if isinstance(error, Mapping):
            reason = f"{error.get('type', 'error')}: {error.get('reason', '')}"
        else:
            reason = str(error)
        super().__init__(f"document {document_id!r} rejected with status {status}: {reason}")
        self.status = status
        self.error = error


class ElasticVersionError(DocumentError):
    """A change's external version is outside what Elasticsearch accepts (0 to 2^63-1):
    sending it would fail the whole request or be rejected, so the change fails alone."""


def external_version(value: object) -> int:
    """An Elasticsearch external version: an integer from 0 to 2^63-1."""
    try:
        return offset(value, "external version")
    except InvalidValueError as exc:
        raise ElasticVersionError(str(exc)) from None


class ElasticIndexMissingError(ElasticDocumentError):
    """The index or alias to write to does not exist (yet): the sink is not set up, so the
    pillow backs off until ``changefeed bootstrap`` creates it, instead of queuing every
    document."""


def index_name(name: object, what: str = "index name") -> str:
    """An Elasticsearch index or alias name: lowercase, no separators or wildcards."""
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or name[0] in "-_+"
        or _INVALID_INDEX_CHARS.search(name)
        or len(name.encode()) > 255
    ):
        raise ValueError(
            f"invalid {what} {name!r}: use lowercase letters, digits, '-', '_' and '.', "
            "not starting with '-', '_' or '+', at most 255 bytes"
        )
    return name


def stub_version(change: Change) -> int | None:
    """The stub's ``version``, else the generation number of its ``document_rev``."""
    meta = change.metadata
    if meta is None:
        return None
    if meta.version is not None:
        return meta.version
    return rev_number(meta.document_rev)


def document_version(func: Callable[[Document], int | None]) -> VersionFunc:
    """Version from the document (``func(doc)``) when there is one, else from the stub
    (deletions have no document)."""

    def version(change: Change) -> int | None:
        doc = None if change.deleted else change.document
        if doc is not None:
            found = func(doc)
            if found is not None:
                return found
        return stub_version(change)

    return version


@dataclass(slots=True)
class _Op:
    change: Change
    action: str
    lines: bytes


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TransportConnectionError | ConnectionTimeout):
        return True
    return isinstance(exc, ApiError) and exc.meta.status in RETRY_STATUSES


class ElasticProcessor(BulkProcessor):
    """Indexes changed documents into ``alias`` and deletes deleted ones, in bulk.

    ``transform(doc)`` turns a document into what is indexed; returning None deletes the
    document from the index (use it to drop documents a pillow does not want). ``version``
    picks each write's external version (default: `stub_version`); a change without one is
    written unversioned, last write wins.
    """

    dependency_errors = (ElasticIndexMissingError,)

    def __init__(
        self,
        client: Elasticsearch | str,
        alias: str,
        *,
        mappings: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
        index_version: str | None = None,
        transform: Transform | None = None,
        version: VersionFunc = stub_version,
        version_type: str = "external",
        chunk_size: int = 1000,
        max_chunk_bytes: int = 10 * 1024 * 1024,
        require_alias: bool = True,
        refresh: bool | str | None = None,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] | None = None,
        name: str | None = None,
    ) -> None:
        self._owns_client = isinstance(client, str)
        # Our own backoff does the retrying, so a client we make does not retry on its own.
        self.client = Elasticsearch(client, max_retries=0) if isinstance(client, str) else client
        self.alias = index_name(alias, "alias name")
        self.mappings = dict(mappings or {})
        self.settings = dict(settings or {})
        suffix = index_version if index_version is not None else self.spec_hash()
        self.index = index_name(f"{self.alias}_{suffix}", "index name")
        if transform is not None:
            self.transform = transform  # type: ignore[method-assign,assignment]
        self.version = version
        if version_type not in VERSION_TYPES:
            raise ValueError(f"version_type must be one of {', '.join(VERSION_TYPES)}")
        self.version_type = version_type
        if chunk_size < 1 or max_chunk_bytes < 1:
            raise ValueError("chunk_size and max_chunk_bytes must be at least 1")
        self.chunk_size = chunk_size
        self.max_chunk_bytes = max_chunk_bytes
        self.require_alias = require_alias
        self.refresh = refresh
        # Bounded like every name the error queue stores (stable hash suffix when long).
        self._name = bounded(name or f"elastic:{self.alias}")
        self._retrier = SinkRetrier(self._name, backoff, sleep)
        self._bootstrapped = False

    @property
    def name(self) -> str:
        return self._name

    def spec_hash(self) -> str:
        """Short hash of settings and mappings: a changed mapping gets a new index name."""
        spec = orjson.dumps(
            {"settings": self.settings, "mappings": self.mappings}, option=orjson.OPT_SORT_KEYS
        )
        return hashlib.sha1(spec).hexdigest()[:10]

    def transform(self, document: Document) -> Document | None:
        """What to index for a document (override per pillow, or pass ``transform=``)."""
        return document

    # -- bootstrap ---------------------------------------------------------------------

    def bootstrap(self) -> None:
        """Create ``self.index`` with settings and mappings behind ``self.alias`` if missing.

        Idempotent, safe to race with other processes, and free after the first success.
        """
        if self._bootstrapped:
            return
        self._retrier.begin_batch()
        self._retrier.call(self._bootstrap, _is_transient)
        self._bootstrapped = True

    def _bootstrap(self) -> None:
        indices = self.client.indices
        found = self.client.options(ignore_status=404).indices.get_alias(name=self.alias)
        if found.meta.status == 200 and found.body:
            current = sorted(found.body)
            if not any(self.is_version(name) for name in current):
                log.warning(
                    "alias %s points to %s, not to %s (settings or mappings changed): "
                    "reindex to move it",
                    self.alias,
                    ", ".join(current),
                    self.index,
                )
            return
        if indices.exists(index=self.alias):
            raise ElasticBootstrapError(
                f"{self.alias!r} is an index, not an alias: reindex it into {self.index!r} "
                "or choose another alias"
            )
        if not indices.exists(index=self.index):
            try:
                indices.create(
                    index=self.index,
                    settings=self.settings or None,
                    mappings=self.mappings or None,
                    aliases={self.alias: {}},
                )
                log.info("created index %s behind alias %s", self.index, self.alias)
                return
            except BadRequestError as exc:
                if exc.error != "resource_already_exists_exception":
                    raise ElasticBootstrapError(
                        f"cannot create index {self.index!r}: {exc}"
                    ) from exc
        indices.put_alias(index=self.index, name=self.alias)
        log.info("pointed alias %s at existing index %s", self.alias, self.index)

    # -- a new index behind the alias (``changefeed reindex --new-index``) ----------------

    def is_version(self, name: str) -> bool:
        """True for an index of these settings and mappings: ``self.index`` or one of its
        rebuilt versions ``<index>_v<N>``."""
        rest = name.removeprefix(self.index)
        return rest == "" or (rest.startswith("_v") and rest[2:].isdigit())

    def alias_indexes(self) -> list[str]:
        """The indexes the alias points at now (none when it does not exist)."""
        found = self.client.options(ignore_status=404).indices.get_alias(name=self.alias)
        if found.meta.status != 200 or not found.body:
            return []
        return sorted(found.body)

    def mapping_changed(self) -> bool:
        """True when the alias points at an index made for other settings or mappings."""
        current = self.alias_indexes()
        return bool(current) and not any(self.is_version(name) for name in current)

    def new_index(self) -> str:
        """Create the next versioned index (``self.index``, then ``<index>_v2``, ...) that no
        alias points at, with the settings and mappings; returns its name. An index of that
        name left behind by an abandoned rebuild (behind no alias) is deleted first."""
        current = set(self.alias_indexes())
        indices = self.client.indices
        n = 1
        while True:
            name = self.index if n == 1 else index_name(f"{self.index}_v{n}", "index name")
            n += 1
            if name in current:
                continue
            if indices.exists(index=name):
                aliases = self.client.indices.get_alias(index=name).body.get(name, {})
                if aliases.get("aliases"):
                    continue
                indices.delete(index=name)
            indices.create(
                index=name, settings=self.settings or None, mappings=self.mappings or None
            )
            return name

    def writer_for(self, index: str) -> ElasticProcessor:
        """A processor like this one that writes straight into ``index`` (not through the
        alias), to fill a new index before `swap_alias`."""
        other = copy.copy(self)
        other.alias = index
        other.require_alias = False
        other._owns_client = False
        other._bootstrapped = True
        other._retrier = SinkRetrier(self._name, None, None)
        return other

    def swap_alias(self, index: str) -> list[str]:
        """Point the alias at ``index`` alone in one ``update_aliases`` call (searches through
        the alias answer from the old index or the new one, never from none), then delete
        the indexes it pointed at before; returns their names."""
        self.client.indices.refresh(index=index)
        old = [name for name in self.alias_indexes() if name != index]
        actions: list[Mapping[str, Any]] = [
            {"remove": {"index": name, "alias": self.alias}} for name in old
        ]
        actions.append({"add": {"index": index, "alias": self.alias}})
        self.client.indices.update_aliases(actions=actions)
        for name in old:
            self.client.options(ignore_status=404).indices.delete(index=name)
        log.info("alias %s now points at %s (deleted %s)", self.alias, index, ", ".join(old))
        return old

    def delete_index(self, index: str) -> None:
        """Delete an index no alias points at (an abandoned rebuild's)."""
        if index in self.alias_indexes():
            raise ElasticBootstrapError(f"index {index!r} is behind alias {self.alias!r}")
        self.client.options(ignore_status=404).indices.delete(index=index)

    # -- processing --------------------------------------------------------------------

    def process_changes(self, changes: Sequence[Change]) -> list[ChangeFailure]:
        self._retrier.begin_batch()
        failures: list[ChangeFailure] = []
        chunk: list[_Op] = []
        size = 0
        for change in changes:
            try:
                op = self._op_for(change)
            except Exception as exc:  # noqa: BLE001 - a bad document fails alone
                # a document that cannot be encoded as JSON, or a version out of range, will
                # not heal by retrying (a newer change brings a newer version)
                failures.append(
                    ChangeFailure(
                        change,
                        exc,
                        not isinstance(exc, orjson.JSONEncodeError | ElasticVersionError),
                    )
                )
                continue
            if chunk and (
                len(chunk) >= self.chunk_size or size + len(op.lines) > self.max_chunk_bytes
            ):
                failures.extend(self._send(chunk))
                chunk, size = [], 0
            chunk.append(op)
            size += len(op.lines)
        if chunk:
            failures.extend(self._send(chunk))
        return failures

    def process_change(self, change: Change) -> None:
        self._retrier.fail_fast()
        super().process_change(change)

    def _op_for(self, change: Change) -> _Op:
        doc = None if change.deleted else change.document
        body = None if doc is None else self.transform(doc)
        header: dict[str, Any] = {"_index": self.alias, "_id": change.id}
        version = self.version(change)
        if version is not None:
            header["version"] = external_version(version)
            header["version_type"] = self.version_type
        if body is None:
            return _Op(change, "delete", orjson.dumps({"delete": header}) + b"\n")
        if not METADATA_FIELDS.isdisjoint(body):
            body = {k: v for k, v in body.items() if k not in METADATA_FIELDS}
        lines = b"%s\n%s\n" % (orjson.dumps({"index": header}), orjson.dumps(body))
        return _Op(change, "index", lines)

    def _send(self, ops: list[_Op]) -> list[ChangeFailure]:
        """One bulk request; rejected-for-now documents are retried with backoff."""
        failures: list[ChangeFailure] = []
        pending = ops
        retry = 0
        while True:
            try:
                response = self.client.bulk(
                    operations=cast(Any, b"".join(op.lines for op in pending)),
                    require_alias=self.require_alias or None,
                    refresh=cast(Any, self.refresh),
                    filter_path="errors,items.*.status,items.*.error",
                )
            except Exception as exc:
                if not _is_transient(exc):
                    raise
                if retry >= self._retrier.retries:
                    raise self._retrier.give_up(exc) from exc
                retry += 1
                self._retrier.wait(retry, exc)
                continue
            if not response.get("errors"):
                return failures
            items = response.get("items") or []
            if len(items) != len(pending):
                raise RuntimeError(
                    f"bulk answered {len(items)} items for {len(pending)} operations"
                )
            again: list[_Op] = []
            for op, item in zip(pending, items, strict=True):
                result = next(iter(item.values()))
                status = int(result.get("status", 500))
                error = result.get("error")
                if status < 300 or status == 409 or (status == 404 and error is None):
                    continue  # done, newer data already there, or nothing to delete
                if status in RETRY_STATUSES:
                    again.append(op)
                    continue
                missing = (
                    status == 404
                    and isinstance(error, Mapping)
                    and error.get("type") == "index_not_found_exception"
                )
                error_class = ElasticIndexMissingError if missing else ElasticDocumentError
                failures.append(
                    ChangeFailure(
                        op.change,
                        error_class(op.change.id, status, error),
                        # 400s are the document's fault and will not heal by retrying
                        retryable=status != 400,
                    )
                )
            if not again:
                return failures
            reason = f"{len(again)} of {len(pending)} documents rejected for now (e.g. 429)"
            if retry >= self._retrier.retries:
                raise self._retrier.give_up(reason)
            retry += 1
            self._retrier.wait(retry, reason)
            pending = again

    # -- verification (``changefeed verify``) -------------------------------------------------

    def verify_output(self, changes: Sequence[Change]) -> OutputDrift:
        """Presence, external version and body of each document (one realtime ``mget``)
        against what indexing its change would write. A body that differs while the index
        holds a version at least the store's, or a version above the store's, cannot be fixed
        by re-indexing (the write would be refused as old): such ids are to be cleared."""
        wanted: dict[str, tuple[int | None, Any] | None] = {}
        for change in changes:
            doc = None if change.deleted else change.document
            body = None if doc is None else self.transform(doc)
            if body is None:
                wanted[change.id] = None
                continue
            if not METADATA_FIELDS.isdisjoint(body):
                body = {k: v for k, v in body.items() if k not in METADATA_FIELDS}
            wanted[change.id] = (self.version(change), orjson.loads(orjson.dumps(body)))
        drift = OutputDrift()
        if not wanted:
            return drift
        response = self.client.mget(index=self.alias, ids=list(wanted))
        hits = {hit["_id"]: hit for hit in response.get("docs", []) if hit.get("found")}
        for doc_id, want in wanted.items():
            hit = hits.get(doc_id)
            if want is None:
                if hit is not None:
                    drift.extra.append(doc_id)
                    drift.clear.append(doc_id)
                continue
            if hit is None:
                drift.missing.append(doc_id)
                continue
            version, body = want
            have = hit.get("_version")
            if version is not None and isinstance(have, int) and have < version:
                drift.stale.append(doc_id)
            elif hit.get("_source") != body or (
                version is not None and isinstance(have, int) and have > version
            ):
                drift.different.append(doc_id)
                if version is not None:
                    drift.clear.append(doc_id)
        return drift

    def iter_output_ids(self, chunk_size: int = 1000) -> Iterator[list[str]]:
        """Every id in the index, by scroll (refreshed first, so recent writes are seen)."""
        self.client.indices.refresh(index=self.alias)
        response = self.client.search(
            index=self.alias, scroll="2m", size=chunk_size, sort=["_doc"], source=False
        )
        scroll_id = response.get("_scroll_id")
        try:
            while True:
                hits = response["hits"]["hits"]
                if not hits:
                    return
                yield [hit["_id"] for hit in hits]
                if scroll_id is None:
                    return
                response = self.client.scroll(scroll_id=scroll_id, scroll="2m")
                scroll_id = response.get("_scroll_id", scroll_id)
        finally:
            if scroll_id is not None:
                self.client.options(ignore_status=404).clear_scroll(scroll_id=scroll_id)

    def close(self) -> None:
        if self._owns_client:
            self.client.close()
