"""The wire contract (`ChangeMeta`) and what a pillow sees (`Change`).

A stub identifies a document change and never carries the document: consumers fetch the
document from its document store, so a replayed stub always yields current data.
Encoding is strict on the fields we know and lenient on the ones we do not (kept in
`extra`), so old consumers survive new producers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC as _UTC
from datetime import datetime as _datetime
from typing import Annotated, Any, NamedTuple

import msgspec
import orjson

from changefeed.identifiers import INT64_MAX, INT64_MIN

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
_OPTIONAL_STR = (
    "document_type",
    "document_subtype",
    "domain",
    "document_rev",
    "associated_document_id",
)
_OPTIONAL_TIME = ("publish_timestamp", "original_publication_timestamp")
_KNOWN = frozenset(
    (*_REQUIRED_STR, *_OPTIONAL_STR, *_OPTIONAL_TIME, "is_deletion", "version", "attempts", "v")
)

HQ_ORIGINAL_PUBLICATION = "original_publication_datetime"
"""CommCare HQ's name for ``original_publication_timestamp`` (an ISO 8601 string there)."""

HQ_SQL_SOURCE_NAMES = frozenset(
    ("form-sql", "case-sql", "sms", "ledger-v2", "ledger-v1", "location", "synclog-sql")
)
"""HQ's SQL data source names. Older HQ stubs put one of them in ``data_source_type`` (HQ's
own lookup still checks both fields); the lenient decoder, which every HQ stub takes (HQ
writes datetimes as strings), moves it to ``data_source_name`` with type ``sql``, so one
registered store serves old and new stubs. The pair as sent is kept in ``extra`` under
`HQ_LEGACY_SOURCE`. Not checked on the C path: that would cost our own stubs ~5%."""

HQ_LEGACY_SOURCE = "hq_legacy_data_source"
"""Key in ``extra`` keeping the (type, name) pair of a legacy HQ stub as it was sent."""


def _bad_type(name: str, expected: str, value: object) -> InvalidChangeError:
    return InvalidChangeError(f"{name!r} must be {expected}, got {value!r}")


def parse_timestamp(name: str, value: object) -> float | None:
    """A stub timestamp as POSIX seconds: a number, or an ISO 8601 string as CommCare HQ
    writes them (``Z`` or an offset or none, which means UTC as in HQ; any fraction).

    Floats keep microseconds exactly for dates of this era (a double has ~0.2 µs there), so
    an HQ datetime survives decode and re-encode unchanged."""
    if value is None:
        return None
    if isinstance(value, float | int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            parsed = _datetime.fromisoformat(value)
        except ValueError:
            raise _bad_type(name, "a number or an ISO 8601 datetime", value) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=_UTC)
        return parsed.timestamp()
    raise _bad_type(name, "a number or an ISO 8601 datetime", value)


class ChangeMeta(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """A change stub: which document changed, where it lives and what kind it is.

    A msgspec Struct, so a stub decodes and validates in C (about four times faster than
    parsing to a dict and checking it in Python): consumers decode one per change. Stubs with
    fields this version does not know fall back to `from_dict`, which keeps them in ``extra``.
    Not tracked by the garbage collector (``gc=False``): stubs hold no reference cycles.
    """

    document_id: str
    data_source_type: str
    data_source_name: str
    document_type: str | None = None
    document_subtype: str | None = None
    domain: str | None = None
    is_deletion: bool = False
    document_rev: str | None = None
    version: Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)] | None = None
    publish_timestamp: float | None = None
    original_publication_timestamp: float | None = None
    attempts: Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)] = 0
    associated_document_id: str | None = None
    """Another document the change came from (HQ: for a case, the form that changed it)."""
    extra: Annotated[dict[str, Any], msgspec.Meta(max_length=0)] = {}
    """Fields this version does not know, kept for re-publishing. (On the wire an ``extra``
    key is just another unknown field: the C decoder refuses a non-empty one.)"""
    schema_version: int = msgspec.field(default=SCHEMA_VERSION, name="v")
    """The stub format version it was written with (``to_dict`` writes the current one)."""

    def __post_init__(self) -> None:
        # Runs for every decoded stub too, hence one cheap test before the detailed one.
        if not (
            type(self.document_id) is str
            and type(self.data_source_type) is str
            and type(self.data_source_name) is str
            and self.document_id
            and self.data_source_type
            and self.data_source_name
        ):
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
        if self.associated_document_id is not None:
            out["associated_document_id"] = self.associated_document_id
        return out

    def encode(self) -> bytes:
        """The wire form of `to_dict`. Encoded in C (publishers encode one per change) unless
        the stub carries unknown fields or another schema version."""
        if self.extra or self.schema_version != SCHEMA_VERSION:
            return orjson.dumps(self.to_dict())
        # Defaults are omitted, as in to_dict; the schema version (a default) goes first.
        return _VERSION_PREFIX + _encode(self)[1:]

    def stamp_unset(self, now: float) -> None:
        """Set the publish timestamps that are not set yet (before first publication)."""
        if self.publish_timestamp is None:
            self.publish_timestamp = now
        if self.original_publication_timestamp is None:
            self.original_publication_timestamp = now

    def copy(self) -> ChangeMeta:
        """An independent copy (``extra`` copied too), for changing before re-publishing."""
        return msgspec.structs.replace(self, extra=dict(self.extra))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChangeMeta:
        """Validate and build a stub from a parsed JSON object: the lenient path, which keeps
        unknown fields in ``extra`` and words every error for the error queue.

        Also reads CommCare HQ's stubs (`changefeed.wire`): ISO 8601 datetimes for timestamps,
        ``original_publication_datetime``, ``null`` for optional fields, and a source name in
        ``data_source_type`` (see `HQ_SQL_SOURCE_NAMES`)."""
        if not isinstance(data, Mapping):
            raise InvalidChangeError(f"stub must be a JSON object, got {type(data).__name__}")
        get = data.get
        for name in _REQUIRED_STR:
            value = get(name)
            if type(value) is not str or not value:
                raise InvalidChangeError(f"missing or invalid {name!r}: {value!r}")
        for name in _OPTIONAL_STR:
            value = get(name)
            if value is not None and type(value) is not str:
                raise _bad_type(name, "a string", value)
        publish_ts = parse_timestamp("publish_timestamp", get("publish_timestamp"))
        original_ts = parse_timestamp(
            "original_publication_timestamp", get("original_publication_timestamp")
        )
        skip: frozenset[str] | set[str] = _KNOWN
        if original_ts is None and HQ_ORIGINAL_PUBLICATION in data:
            original_ts = parse_timestamp(HQ_ORIGINAL_PUBLICATION, data[HQ_ORIGINAL_PUBLICATION])
            skip = _KNOWN | {HQ_ORIGINAL_PUBLICATION}
        version = get("version")
        if version is not None and (
            type(version) is not int or not INT64_MIN <= version <= INT64_MAX
        ):
            raise _bad_type("version", "a signed 64-bit integer", version)
        is_deletion = get("is_deletion")
        if is_deletion is None:
            is_deletion = False
        elif type(is_deletion) is not bool:
            raise _bad_type("is_deletion", "a boolean", is_deletion)
        attempts = get("attempts")
        if attempts is None:
            attempts = 0
        elif type(attempts) is not int or not 0 <= attempts <= INT64_MAX:
            raise _bad_type("attempts", "a non-negative 64-bit integer", attempts)
        extra = {k: x for k, x in data.items() if k not in skip}
        source_type, source_name = data["data_source_type"], data["data_source_name"]
        if source_type in HQ_SQL_SOURCE_NAMES:
            extra[HQ_LEGACY_SOURCE] = [source_type, source_name]
            source_type, source_name = "sql", source_type
        schema = get("v")
        return cls(
            data["document_id"],
            source_type,
            source_name,
            document_type=get("document_type"),
            document_subtype=get("document_subtype"),
            domain=get("domain"),
            is_deletion=is_deletion,
            document_rev=get("document_rev"),
            version=version,
            publish_timestamp=publish_ts,
            original_publication_timestamp=original_ts,
            attempts=attempts,
            associated_document_id=get("associated_document_id"),
            extra=extra,
            schema_version=schema if type(schema) is int else SCHEMA_VERSION,
        )

    @classmethod
    def decode(cls, raw: bytes | str) -> ChangeMeta:
        """Decode one stub: in C when it has exactly the fields we know (the usual case),
        else through `from_dict`."""
        try:
            return _decode_one(raw)
        except Exception:  # noqa: BLE001 - the lenient path decides, and words the error
            return cls._decode_lenient(raw)

    @classmethod
    def decode_many(cls, raws: Iterable[bytes]) -> list[ChangeMeta] | None:
        """Decode stubs in one C loop; None when any of them needs `decode` (unknown fields,
        invalid), so the caller decodes those one by one and words their errors."""
        try:
            return list(map(_decode_one, raws))
        except Exception:  # noqa: BLE001 - the one-by-one path decides
            return None

    @classmethod
    def decode_array(cls, raw: bytes) -> list[ChangeMeta] | None:
        """Decode a JSON array of stubs (as the embedded log stores them) in one call; None
        when any of them needs `from_dict`."""
        try:
            return _decode_array(raw)
        except Exception:  # noqa: BLE001 - the one-by-one path decides
            return None

    @classmethod
    def _decode_lenient(cls, raw: bytes | str) -> ChangeMeta:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidChangeError(f"stub is not valid JSON: {exc}") from None
        return cls.from_dict(data)


_VERSION_PREFIX = b'{"v":%d,' % SCHEMA_VERSION
_encode = msgspec.json.Encoder().encode
_decode_one = msgspec.json.Decoder(ChangeMeta).decode
_decode_array = msgspec.json.Decoder(list[ChangeMeta]).decode


_new_object = object.__new__


class Change:
    """One change as a pillow sees it: the stub, where it sits in the log, and its document.

    A change holds its document, it never fetches one: the pillow fetches documents for a
    whole batch in bulk (`changefeed.stores.fetch`) and hands each over with `set_document`.
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
        return self

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    @property
    def is_valid(self) -> bool:
        return self.metadata is not None

    @property
    def document(self) -> dict[str, Any] | None:
        """The full document, as the pillow fetched it (None when deleted or not fetched)."""
        return self._document

    def set_document(self, document: dict[str, Any] | None) -> None:
        self._document = document
        self._fetched = True

    @property
    def has_document(self) -> bool:
        """True once a document (or its absence, for a deletion) has been set."""
        return self._fetched

    def __repr__(self) -> str:
        return f"Change({self.topic}[{self.partition}]@{self.offset} id={self.id!r} deleted={self.deleted})"
