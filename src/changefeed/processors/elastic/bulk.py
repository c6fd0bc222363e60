"""The bulk write path: changes encoded as bulk operations, sent, and the answer per item.

Per-document rejections (a mapping conflict) come back as `ChangeFailure` while the rest of
the batch is indexed. Connection errors and 429/5xx answers are retried with bounded backoff;
if they persist `SinkRetrier.give_up` raises `SinkUnavailableError` and the pillow backs off.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import orjson
from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout
from elasticsearch import ApiError, Elasticsearch

from changefeed.change import Change
from changefeed.processors.backoff import SinkRetrier
from changefeed.processors.base import ChangeFailure
from changefeed.processors.elastic.errors import ElasticDocumentError, ElasticIndexMissingError
from changefeed.processors.elastic.versions import Document, external_version

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


@dataclass(slots=True)
class BulkOp:
    """One change as bulk request lines (header, and the body for an index)."""

    change: Change
    action: str
    lines: bytes


def is_transient(exc: BaseException) -> bool:
    """An error that may pass by itself: retried, never blamed on a document."""
    if isinstance(exc, TransportConnectionError | ConnectionTimeout):
        return True
    return isinstance(exc, ApiError) and exc.meta.status in RETRY_STATUSES


def without_metadata(body: Document) -> Document:
    """The body without the top-level fields Elasticsearch refuses (`METADATA_FIELDS`)."""
    if METADATA_FIELDS.isdisjoint(body):
        return body
    return {k: v for k, v in body.items() if k not in METADATA_FIELDS}


def encode_op(
    change: Change, body: Document | None, index: str, version: int | None, version_type: str
) -> BulkOp:
    """``body`` indexed into ``index`` under the change's id, or a delete when it is None;
    versioned when ``version`` is set (`ElasticVersionError` when out of range)."""
    header: dict[str, Any] = {"_index": index, "_id": change.id}
    if version is not None:
        header["version"] = external_version(version)
        header["version_type"] = version_type
    if body is None:
        return BulkOp(change, "delete", orjson.dumps({"delete": header}) + b"\n")
    body = without_metadata(body)
    lines = b"%s\n%s\n" % (orjson.dumps({"index": header}), orjson.dumps(body))
    return BulkOp(change, "index", lines)


def send_bulk(
    client: Elasticsearch,
    ops: list[BulkOp],
    retrier: SinkRetrier,
    *,
    require_alias: bool,
    refresh: bool | str | None,
) -> list[ChangeFailure]:
    """One bulk request; rejected-for-now documents are retried with backoff."""
    failures: list[ChangeFailure] = []
    pending = ops
    retry = 0
    while True:
        try:
            response = client.bulk(
                operations=cast(Any, b"".join(op.lines for op in pending)),
                require_alias=require_alias or None,
                refresh=cast(Any, refresh),
                filter_path="errors,items.*.status,items.*.error",
            )
        except Exception as exc:
            if not is_transient(exc):
                raise
            retry = retrier.next_try(retry, exc)
            continue
        if not response.get("errors"):
            return failures
        items = response.get("items") or []
        if len(items) != len(pending):
            raise RuntimeError(f"bulk answered {len(items)} items for {len(pending)} operations")
        again: list[BulkOp] = []
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
        retry = retrier.next_try(retry, reason)
        pending = again
