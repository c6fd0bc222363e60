"""Wire formats: how a stub is written to the log.

Reading needs no choice: `ChangeMeta.decode` reads both formats (ours on the fast C path,
CommCare HQ's on the lenient one), so a pillow can share topics with HQ's publishers. Writing
does: HQ's consumers parse ``publish_timestamp`` and ``original_publication_datetime`` as
ISO 8601 strings with exactly six fraction digits and a ``Z``, and fail on our floats. So a
publisher that feeds HQ pillows writes the ``hq`` format (chosen per backend URL or per
publisher); everything else keeps the default ``changefeed`` format.

The fields each format carries are tabled in docs/hq-compat.md. In short, ``hq`` writes
every field HQ declares (``null`` when unset), ISO datetimes, ``original_publication_datetime``
instead of ``original_publication_timestamp``, and no schema version ``v``.

Both formats are keyed by the document id (UTF-8), so one document stays in one partition.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson

from changefeed.change import HQ_ORIGINAL_PUBLICATION, ChangeMeta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class WireFormat(StrEnum):
    """A stub format a publisher can write."""

    CHANGEFEED = "changefeed"
    """Ours: compact, numeric timestamps, encoded in C (the default)."""
    HQ = "hq"
    """CommCare HQ's ``ChangeMeta`` JSON, as its pillows read it."""


DEFAULT_WIRE_FORMAT = WireFormat.CHANGEFEED

HQ_FIELDS: tuple[str, ...] = (
    "document_id",
    "document_rev",
    "data_source_type",
    "data_source_name",
    "document_type",
    "document_subtype",
    "domain",
    "is_deletion",
    "publish_timestamp",
    "attempts",
    HQ_ORIGINAL_PUBLICATION,
    "associated_document_id",
)
"""The fields HQ's ``ChangeMeta`` declares, in its order (it writes every one of them)."""

HQ_DATETIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
"""How HQ writes datetimes: naive UTC with all six fraction digits and a ``Z``; its parser
accepts that or no fraction at all, nothing else."""


class InvalidWireFormatError(ValueError):
    """An unknown wire format name (a bad ``wire=`` option)."""


def wire_format(value: object) -> WireFormat:
    """Validate a ``wire=`` option value (case-insensitive); None means the default."""
    if value is None or value == "":
        return DEFAULT_WIRE_FORMAT
    if isinstance(value, str):
        try:
            return WireFormat(value.strip().lower())
        except ValueError:
            pass
    names = ", ".join(f.value for f in WireFormat)
    raise InvalidWireFormatError(f"unknown wire format {value!r}: use one of {names}")


def hq_datetime(ts: float) -> str:
    """POSIX seconds as HQ writes a datetime, to the microsecond.

    Whole seconds and the fraction are converted apart, so a timestamp decoded from an HQ
    datetime is written back exactly as it came."""
    whole = int(ts // 1)
    micros = round((ts - whole) * 1_000_000)
    return (_EPOCH + timedelta(seconds=whole, microseconds=micros)).strftime(HQ_DATETIME_FORMAT)


def hq_dict(meta: ChangeMeta, now: float | None = None) -> dict[str, Any]:
    """The stub as HQ's ``ChangeMeta.to_json()`` would give it: every declared field, in
    HQ's order, then ``version`` when set and the unknown fields. Unset publish times get
    ``now`` (HQ's own default is the time the stub is made, so its consumers never see
    null there)."""
    stamp = time.time() if now is None else now
    published = meta.publish_timestamp if meta.publish_timestamp is not None else stamp
    original = meta.original_publication_timestamp
    out: dict[str, Any] = {
        "document_id": meta.document_id,
        "document_rev": meta.document_rev,
        "data_source_type": meta.data_source_type,
        "data_source_name": meta.data_source_name,
        "document_type": meta.document_type,
        "document_subtype": meta.document_subtype,
        "domain": meta.domain,
        "is_deletion": meta.is_deletion,
        "publish_timestamp": hq_datetime(published),
        "attempts": meta.attempts,
        HQ_ORIGINAL_PUBLICATION: hq_datetime(original if original is not None else published),
        "associated_document_id": meta.associated_document_id,
    }
    if meta.version is not None:
        out["version"] = meta.version
    for key, value in meta.extra.items():
        out.setdefault(key, value)
    return out


def encode_hq(meta: ChangeMeta) -> bytes:
    """One stub in HQ's wire format."""
    return orjson.dumps(hq_dict(meta))


def encode_changefeed(meta: ChangeMeta) -> bytes:
    """One stub in our wire format (`ChangeMeta.encode`)."""
    return meta.encode()


def message_key(meta: ChangeMeta) -> bytes:
    """The message key both formats use: the document id as UTF-8."""
    return meta.document_id.encode()


_ENCODERS: dict[WireFormat, Callable[[ChangeMeta], bytes]] = {
    WireFormat.CHANGEFEED: ChangeMeta.encode,
    WireFormat.HQ: encode_hq,
}


def encoder_for(name: WireFormat | str | None = None) -> Callable[[ChangeMeta], bytes]:
    """The encoder of a wire format (by name; None for the default)."""
    return _ENCODERS[wire_format(name)]


__all__ = [
    "DEFAULT_WIRE_FORMAT",
    "HQ_DATETIME_FORMAT",
    "HQ_FIELDS",
    "InvalidWireFormatError",
    "WireFormat",
    "encode_changefeed",
    "encode_hq",
    "encoder_for",
    "hq_datetime",
    "hq_dict",
    "message_key",
    "wire_format",
]
