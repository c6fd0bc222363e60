"""How a stored batch holds its records: one JSON array, one element per record.

A record is its stub as a JSON object, and its key is the stub's document id: that is all a
publisher writes, and it lets a reader decode a whole batch in one C call
(`ChangeMeta.decode_array`). A record whose value is not known to be a stub (written with
`SQLitePublisher.append_raw`: another producer's bytes, or a test's bad record) is the
element ``[key, value]``, the value as Latin-1 text so that any bytes come back exactly;
the reader hands those to `Change.from_raw`, which words the error for the error queue and
names the record by its key, as the Kafka feed does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import repeat
from typing import Any

import orjson

from changefeed.backends.base import ChangeList
from changefeed.change import Change, ChangeMeta, TopicPartition

BATCH_FORMAT = 1
"""The ``batches.format`` value of this layout."""

MAX_BATCH_RECORDS = 2000
"""Records per stored batch: big enough to amortise, small enough to seek into cheaply."""

_decoded = Change.decoded
_decode_array = ChangeMeta.decode_array


def encode_record(key: str, value: bytes) -> bytes:
    """The array element of a record that may not be a stub (``append_raw``)."""
    return orjson.dumps([key, value.decode("latin-1")])


def encode_batch(elements: Iterable[bytes]) -> bytes:
    """A batch payload from encoded stubs (`ChangeMeta.encode`) or `encode_record` elements."""
    return b"[" + b",".join(elements) + b"]"


def decode_batch(
    topic: str,
    partition: int,
    base: int,
    payload: bytes,
    skip: int,
    next_offsets: Mapping[TopicPartition, int],
) -> ChangeList:
    """The changes of a batch starting at offset ``base``, without its first ``skip``."""
    metas = _decode_array(payload)
    if metas is not None:  # valid stubs (the usual case): built in C loops
        return ChangeList(
            map(
                _decoded,
                repeat(topic),
                repeat(partition),
                range(base + skip, base + len(metas)),
                metas[skip:] if skip else metas,
            ),
            next_offsets,
        )
    end = next_offsets.get(TopicPartition(topic, partition), base)
    try:
        values = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        values = exc
    if not isinstance(values, list) or len(values) != end - base:
        # A damaged batch (edited by hand, a disk fault) must not stop the pillow on every
        # run: each of its records becomes an invalid change, queued like a bad stub.
        error = f"damaged log batch at offset {base} ({len(payload)} bytes): cannot be decoded"
        return ChangeList(
            (
                Change(topic, partition, offset, None, raw=payload[:1024], error=error)
                for offset in range(base + skip, end)
            ),
            next_offsets,
        )
    return ChangeList(
        (_lenient(topic, partition, base + i, values[i]) for i in range(skip, len(values))),
        next_offsets,
    )


def _lenient(topic: str, partition: int, offset: int, value: Any) -> Change:
    """One record of a batch that did not decode in one call: an invalid stub becomes a
    change carrying the error."""
    if type(value) is list and len(value) == 2 and type(value[0]) is type(value[1]) is str:
        key, text = value
        return Change.from_raw(topic, partition, offset, text.encode("latin-1"), key)
    return Change.from_dict(topic, partition, offset, value)
