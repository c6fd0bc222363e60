"""The wire contract (`ChangeMeta`) and what a pillow sees (`Change`).

A stub identifies a document change and never carries the document: consumers fetch the
document from its document store, so a replayed stub always yields current data.
Encoding is strict on the fields we know and lenient on the ones we do not (kept in
`extra`), so old consumers survive new producers.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

if TYPE_CHECKING:
    from changefeed.stores.base import DocumentStore

SCHEMA_VERSION = 1
"""Version of the stub format; written as ``"v"``. Newer stubs still decode (extra fields kept)."""


class InvalidChangeError(ValueError):
    """A stub that cannot be decoded or lacks required fields."""


class TopicPartition(NamedTuple):
    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]"


_REQUIRED_STR = ("document_id", "data_source_type", "data_source_name")
_OPTIONAL_STR = ("document_type", "document_subtype", "domain", "document_rev")
_OPTIONAL_NUM = ("publish_timestamp", "original_publication_timestamp")
_KNOWN = frozenset(
    (*_REQUIRED_STR, *_OPTIONAL_STR, *_OPTIONAL_NUM, "is_deletion", "version", "attempts", "v")
)


def _bad_type(name: str, expected: str, value: object) -> InvalidChangeError:
    return InvalidChangeError(f"{name!r} must be {expected}, got {value!r}")


@dataclass(slots=True)
class ChangeMeta:
    """A change stub: which document changed, where it lives and what kind it is."""

    document_id: str
    data_source_type: str
    data_source_name: str
    document_type: str | None = None
    document_subtype: str | None = None
    domain: str | None = None
    is_deletion: bool = False
    document_rev: str | None = None
    version: int | None = None
    publish_timestamp: float | None = None
    original_publication_timestamp: float | None = None
    attempts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in _REQUIRED_STR:
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise InvalidChangeError(f"{name} must be a non-empty string, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra) if self.extra else {}
        out["v"] = SCHEMA_VERSION
        out["document_id"] = self.document_id
        out["data_source_type"] = self.data_source_type
        out["data_source_name"] = self.data_source_name
        if self.document_type is not None:
            out["document_type"] = self.document_type
        if self.document_subtype is not None:
            out["document_subtype"] = self.document_subtype
        if self.domain is not None:
            out["domain"] = self.domain
        if self.is_deletion:
            out["is_deletion"] = True
        if self.document_rev is not None:
            out["document_rev"] = self.document_rev
        if self.version is not None:
            out["version"] = self.version
        if self.publish_timestamp is not None:
            out["publish_timestamp"] = self.publish_timestamp
        if self.original_publication_timestamp is not None:
            out["original_publication_timestamp"] = self.original_publication_timestamp
        if self.attempts:
            out["attempts"] = self.attempts
        return out

    def encode(self) -> bytes:
        return orjson.dumps(self.to_dict())

    def wire_dict(self, now: float) -> dict[str, Any]:
        """`to_dict` for publishing: stamps publish timestamps first (the original one only on
        first publication)."""
        if self.publish_timestamp is None:
            self.publish_timestamp = now
        if self.original_publication_timestamp is None:
            self.original_publication_timestamp = now
        return self.to_dict()

    def stamped(self, now: float | None = None) -> ChangeMeta:
        """Set publish timestamps (the original one only on first publication)."""
        ts = time.time() if now is None else now
        self.publish_timestamp = ts
        if self.original_publication_timestamp is None:
            self.original_publication_timestamp = ts
        return self

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChangeMeta:
        """Validate and build a stub. Unrolled with exact type checks: this runs once per
        change on the consumer hot path."""
        if type(data) is not dict:
            if not isinstance(data, Mapping):
                raise InvalidChangeError(f"stub must be a JSON object, got {type(data).__name__}")
            data = dict(data)
        get = data.get
        doc_id = get("document_id")
        ds_type = get("data_source_type")
        ds_name = get("data_source_name")
        if type(doc_id) is not str or not doc_id:
            raise InvalidChangeError(f"missing or invalid 'document_id': {doc_id!r}")
        if type(ds_type) is not str or not ds_type:
            raise InvalidChangeError(f"missing or invalid 'data_source_type': {ds_type!r}")
        if type(ds_name) is not str or not ds_name:
            raise InvalidChangeError(f"missing or invalid 'data_source_name': {ds_name!r}")
        self = object.__new__(cls)
        self.document_id = doc_id
        self.data_source_type = ds_type
        self.data_source_name = ds_name
        self.document_type = v = get("document_type")
        if v is not None and type(v) is not str:
            raise _bad_type("document_type", "a string", v)
        self.document_subtype = v = get("document_subtype")
        if v is not None and type(v) is not str:
            raise _bad_type("document_subtype", "a string", v)
        self.domain = v = get("domain")
        if v is not None and type(v) is not str:
            raise _bad_type("domain", "a string", v)
        self.document_rev = v = get("document_rev")
        if v is not None and type(v) is not str:
            raise _bad_type("document_rev", "a string", v)
        self.publish_timestamp = v = get("publish_timestamp")
        if v is not None and type(v) is not float and type(v) is not int:
            raise _bad_type("publish_timestamp", "a number", v)
        self.original_publication_timestamp = v = get("original_publication_timestamp")
        if v is not None and type(v) is not float and type(v) is not int:
            raise _bad_type("original_publication_timestamp", "a number", v)
        self.version = v = get("version")
        if v is not None and type(v) is not int:
            raise _bad_type("version", "an integer", v)
        v = get("is_deletion", False)
        if type(v) is not bool:
            raise _bad_type("is_deletion", "a boolean", v)
        self.is_deletion = v
        v = get("attempts", 0)
        if type(v) is not int or v < 0:
            raise _bad_type("attempts", "a non-negative integer", v)
        self.attempts = v
        self.extra = (
            {} if data.keys() <= _KNOWN else {k: x for k, x in data.items() if k not in _KNOWN}
        )
        return self

    @classmethod
    def decode(cls, raw: bytes | str) -> ChangeMeta:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidChangeError(f"stub is not valid JSON: {exc}") from None
        return cls.from_dict(data)


_new_object = object.__new__


class Change:
    """One change as a pillow sees it: the stub, where it sits in the log, and its document.

    The document is fetched lazily, at most once; pillows fetch documents for a whole batch in
    bulk and hand them over with `set_document`, so processors never trigger their own fetches.
    A change whose stub could not be decoded has ``metadata is None`` and carries the reason in
    ``error`` and the undecoded bytes in ``raw``; the pillow routes it to the error queue.
    """

    __slots__ = (
        "topic",
        "partition",
        "offset",
        "id",
        "metadata",
        "raw",
        "error",
        "_document",
        "_fetched",
        "_store",
        "deleted",
    )

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        metadata: ChangeMeta | None,
        *,
        raw: bytes | None = None,
        error: str | None = None,
        document_id: str | None = None,
        store: DocumentStore | None = None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.metadata = metadata
        self.raw = raw
        self.error = error
        self.id: str = metadata.document_id if metadata is not None else (document_id or "")
        self.deleted: bool = metadata.is_deletion if metadata is not None else False
        self._document: dict[str, Any] | None = None
        self._fetched = False
        self._store = store

    @classmethod
    def from_dict(cls, topic: str, partition: int, offset: int, data: Any, key: str = "") -> Change:
        """Build from an already-parsed stub; an invalid one becomes a Change with the error."""
        try:
            return cls(topic, partition, offset, ChangeMeta.from_dict(data))
        except InvalidChangeError as exc:
            if not key and isinstance(data, dict) and isinstance(data.get("document_id"), str):
                key = data["document_id"]
            return cls(
                topic,
                partition,
                offset,
                None,
                raw=orjson.dumps(data),
                error=str(exc),
                document_id=key,
            )

    @classmethod
    def from_raw(cls, topic: str, partition: int, offset: int, raw: bytes, key: str = "") -> Change:
        """Decode a log record; an invalid stub becomes a Change carrying the error."""
        try:
            return cls(topic, partition, offset, ChangeMeta.decode(raw))
        except InvalidChangeError as exc:
            return cls(topic, partition, offset, None, raw=raw, error=str(exc), document_id=key)

    @staticmethod
    def decoded(topic: str, partition: int, offset: int, metadata: ChangeMeta) -> Change:
        """``Change(topic, partition, offset, metadata)`` for a decoded stub, without the
        keyword handling of ``__init__``: feeds build one per log record, and this is about
        twice as fast."""
        self = _new_object(Change)
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.metadata = metadata
        self.raw = None
        self.error = None
        self.id = metadata.document_id
        self.deleted = metadata.is_deletion
        self._document = None
        self._fetched = False
        self._store = None
        return self

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    @property
    def is_valid(self) -> bool:
        return self.metadata is not None

    @property
    def document(self) -> dict[str, Any] | None:
        return self.get_document()

    def set_document(self, document: dict[str, Any] | None) -> None:
        self._document = document
        self._fetched = True

    def set_store(self, store: DocumentStore) -> None:
        self._store = store

    @property
    def has_document(self) -> bool:
        return self._fetched

    def get_document(self) -> dict[str, Any] | None:
        """The full document, fetched once from the document store (None when deleted)."""
        if not self._fetched:
            self._fetched = True
            if self.deleted or self._store is None:
                self._document = None
            else:
                from changefeed.stores.base import DocumentDeleted

                found = self._store.get_document(self.id)
                if found is DocumentDeleted:
                    self.deleted = True
                    self._document = None
                else:
                    self._document = found  # type: ignore[assignment]
        return self._document

    def __repr__(self) -> str:
        return f"Change({self.topic}[{self.partition}]@{self.offset} id={self.id!r} deleted={self.deleted})"
