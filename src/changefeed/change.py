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

    def stamped(self, now: float | None = None) -> ChangeMeta:
        """Set publish timestamps (the original one only on first publication)."""
        ts = time.time() if now is None else now
        self.publish_timestamp = ts
        if self.original_publication_timestamp is None:
            self.original_publication_timestamp = ts
        return self

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChangeMeta:
        if not isinstance(data, Mapping):
            raise InvalidChangeError(f"stub must be a JSON object, got {type(data).__name__}")
        get = data.get
        for name in _REQUIRED_STR:
            value = get(name)
            if not isinstance(value, str) or not value:
                raise InvalidChangeError(f"missing or invalid {name!r}: {value!r}")
        for name in _OPTIONAL_STR:
            value = get(name)
            if value is not None and not isinstance(value, str):
                raise InvalidChangeError(f"{name!r} must be a string, got {value!r}")
        for name in _OPTIONAL_NUM:
            value = get(name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise InvalidChangeError(f"{name!r} must be a number, got {value!r}")
        is_deletion = get("is_deletion", False)
        if not isinstance(is_deletion, bool):
            raise InvalidChangeError(f"'is_deletion' must be a boolean, got {is_deletion!r}")
        version = get("version")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise InvalidChangeError(f"'version' must be an integer, got {version!r}")
        attempts = get("attempts", 0)
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
            raise InvalidChangeError(f"'attempts' must be a non-negative integer, got {attempts!r}")
        extra = {k: v for k, v in data.items() if k not in _KNOWN} if len(data) > 3 else {}
        return cls(
            data["document_id"],
            data["data_source_type"],
            data["data_source_name"],
            get("document_type"),
            get("document_subtype"),
            get("domain"),
            is_deletion,
            get("document_rev"),
            version,
            get("publish_timestamp"),
            get("original_publication_timestamp"),
            attempts,
            extra,
        )

    @classmethod
    def decode(cls, raw: bytes | str) -> ChangeMeta:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidChangeError(f"stub is not valid JSON: {exc}") from None
        return cls.from_dict(data)


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
    def from_raw(cls, topic: str, partition: int, offset: int, raw: bytes, key: str = "") -> Change:
        """Decode a log record; an invalid stub becomes a Change carrying the error."""
        try:
            return cls(topic, partition, offset, ChangeMeta.decode(raw))
        except InvalidChangeError as exc:
            return cls(topic, partition, offset, None, raw=raw, error=str(exc), document_id=key)

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
