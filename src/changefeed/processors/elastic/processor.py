"""`ElasticProcessor`: keeps an Elasticsearch index in sync, one bulk request per batch.

The processor ties together the index behind its alias (`index`), the bulk write path
(`bulk`) and external versions (`versions`), and checks the index against the document
stores for ``changefeed verify``.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import orjson
from elasticsearch import Elasticsearch

from changefeed.change import Change
from changefeed.clock import SYSTEM_CLOCK, Clock
from changefeed.errors import bounded
from changefeed.processors.backoff import Backoff, SinkRetrier
from changefeed.processors.base import (
    BulkProcessor,
    ChangeFailure,
    OutputDrift,
    Rebuildable,
    Shadow,
)
from changefeed.processors.elastic.bulk import (
    BulkOp,
    encode_op,
    is_transient,
    send_bulk,
    without_metadata,
)
from changefeed.processors.elastic.errors import (
    ElasticBootstrapError,
    ElasticIndexMissingError,
    ElasticVersionError,
)
from changefeed.processors.elastic.index import (
    alias_indexes,
    create_next_index,
    ensure_index,
    index_name,
    is_version,
    swap_alias,
)
from changefeed.processors.elastic.versions import (
    VERSION_TYPES,
    Document,
    VersionFunc,
    stub_version,
)

Transform = Callable[[Document], "Document | None"]


class ElasticProcessor(BulkProcessor, Rebuildable):
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
        clock: Clock = SYSTEM_CLOCK,
        name: str | None = None,
    ) -> None:
        self._url = client if isinstance(client, str) else None
        self._owns_client = self._url is not None
        self._client = None if isinstance(client, str) else client
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
        self._retrier = SinkRetrier(self._name, backoff, clock)
        self._bootstrapped = False

    @property
    def name(self) -> str:
        return self._name

    @property
    def client(self) -> Elasticsearch:
        """The client; one made from a URL is made on first use, and again after `close`:
        the docs make a processor once per module and the CLI builds a pillow around it more
        than once in one command (a mapping check, then the reindex), closing each."""
        if self._client is None:
            assert self._url is not None
            # Our own backoff does the retrying, so a client we make does not retry on its own.
            self._client = Elasticsearch(self._url, max_retries=0)
        return self._client

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
        self._retrier.call(self._bootstrap, is_transient)
        self._bootstrapped = True

    def _bootstrap(self) -> None:
        ensure_index(
            self.client, self.alias, self.index, self.settings, self.mappings, self.is_version
        )

    # -- a new index behind the alias (``changefeed reindex --new-index``) ----------------

    def is_version(self, name: str) -> bool:
        """True for an index of these settings and mappings: ``self.index`` or one of its
        rebuilt versions ``<index>_v<N>``."""
        return is_version(self.index, name)

    def alias_indexes(self) -> list[str]:
        """The indexes the alias points at now (none when it does not exist)."""
        return alias_indexes(self.client, self.alias)

    def mapping_changed(self) -> bool:
        """True when the alias points at an index made for other settings or mappings."""
        current = self.alias_indexes()
        return bool(current) and not any(self.is_version(name) for name in current)

    def new_index(self) -> str:
        """Create the next versioned index (``self.index``, then ``<index>_v2``, ...) that no
        alias points at, with the settings and mappings; returns its name. An index of that
        name left behind by an abandoned rebuild (behind no alias) is deleted first."""
        return create_next_index(self.client, self.alias, self.index, self.settings, self.mappings)

    def writer_for(self, index: str) -> ElasticProcessor:
        """A processor like this one that writes straight into ``index`` (not through the
        alias), to fill a new index before `swap_alias`."""
        other = copy.copy(self)
        other._client = self.client  # shared, never closed by the writer
        other.alias = index
        other.require_alias = False
        other._owns_client = False
        other._bootstrapped = True
        other._retrier = SinkRetrier(self._name)
        return other

    def swap_alias(self, index: str) -> list[str]:
        """Point the alias at ``index`` alone in one ``update_aliases`` call (searches through
        the alias answer from the old index or the new one, never from none), then delete
        the indexes it pointed at before; returns their names."""
        return swap_alias(self.client, self.alias, index)

    def delete_index(self, index: str) -> None:
        """Delete an index no alias points at (an abandoned rebuild's)."""
        if index in self.alias_indexes():
            raise ElasticBootstrapError(f"index {index!r} is behind alias {self.alias!r}")
        self.client.options(ignore_status=404).indices.delete(index=index)

    # -- the rebuild contract (`Rebuildable`): a new index, then the alias swap ------------

    def prepare_rebuild(self) -> None:
        self.bootstrap()

    def shadow_output(self) -> Shadow:
        return _NewIndex(self, self.new_index())

    def output_outdated(self) -> bool:
        return self.mapping_changed()

    # -- processing --------------------------------------------------------------------

    def process_changes(self, changes: Sequence[Change]) -> list[ChangeFailure]:
        self._retrier.begin_batch()
        failures: list[ChangeFailure] = []
        chunk: list[BulkOp] = []
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

    def _op_for(self, change: Change) -> BulkOp:
        doc = None if change.deleted else change.document
        body = None if doc is None else self.transform(doc)
        return encode_op(change, body, self.alias, self.version(change), self.version_type)

    def _send(self, ops: list[BulkOp]) -> list[ChangeFailure]:
        return send_bulk(
            self.client,
            ops,
            self._retrier,
            require_alias=self.require_alias,
            refresh=self.refresh,
        )

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
            body = without_metadata(body)
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
        if self._owns_client and self._client is not None:
            self._client.close()
            self._client = None


class _NewIndex(Shadow):
    """A new versioned index being filled for `ElasticProcessor.swap_alias`."""

    def __init__(self, live: ElasticProcessor, index: str) -> None:
        self.live = live
        self.target = index
        self.processor = live.writer_for(index)

    def swap_in(self) -> None:
        self.live.swap_alias(self.target)

    def abandon(self) -> None:
        """Deleted: a rebuild cannot resume into it (the next one makes a new index)."""
        self.live.delete_index(self.target)
