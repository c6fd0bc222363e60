"""One validator per kind of number: signed 64-bit integers, offsets, and the stub decoder's
use of the same range on both of its paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from changefeed.backends.local import SQLiteLog
from changefeed.change import ChangeMeta, TopicPartition
from changefeed.identifiers import INT64_MAX, INT64_MIN, InvalidValueError, int64, offset


def test_int64_bounds() -> None:
    assert int64(INT64_MAX, "id") == INT64_MAX
    assert int64(INT64_MIN, "id") == INT64_MIN
    for bad in (INT64_MAX + 1, INT64_MIN - 1, 2**100, True, 1.0, "5", None):
        with pytest.raises(InvalidValueError, match="id"):
            int64(bad, "id")


def test_offset_is_non_negative_int64() -> None:
    assert offset(0) == 0 and offset(INT64_MAX) == INT64_MAX
    for bad in (-1, INT64_MAX + 1):
        with pytest.raises(InvalidValueError, match="offset"):
            offset(bad)


def _raw(doc_id: str, **fields: int) -> bytes:
    extra = "".join(f',"{k}":{v}' for k, v in fields.items())
    return (
        f'{{"document_id":"{doc_id}","data_source_type":"sql","data_source_name":"s"{extra}}}'
    ).encode()


@pytest.mark.parametrize(
    "field, value",
    [
        ("version", 2**63),
        ("version", 2**64),
        ("version", -(2**63) - 1),
        ("attempts", 2**63),
    ],
)
def test_stub_numbers_beyond_int64_are_invalid_alone_and_in_any_batch(
    tmp_path: Path, field: str, value: int
) -> None:
    """The same stub is invalid whether it is decoded alone, with valid stubs, or with stubs
    that need the lenient path (unknown fields)."""
    bad = _raw("bad", **{field: value})
    with pytest.raises(ValueError, match=field):
        ChangeMeta.decode(bad)
    log = SQLiteLog(tmp_path / "log.db")
    log.admin().create_topic("t", 1)
    lenient = b'{"document_id":"x","data_source_type":"sql","data_source_name":"s","new":1}'
    with log.publisher() as pub:
        pub.append_raw([("t", "bad", bad)])
        pub.append_raw([("t", "a", _raw("a")), ("t", "bad", bad), ("t", "b", _raw("b"))])
        pub.append_raw([("t", "x", lenient), ("t", "bad", bad)])
        pub.append_raw([("t", "ok", _raw("ok", version=INT64_MAX))])
    feed = log.change_feed(["t"])
    changes = [c for c in feed.iter_changes({TopicPartition("t", 0): 0}) if c]
    feed.close()
    log.close()
    assert [(c.id, c.is_valid) for c in changes] == [
        ("bad", False),
        ("a", True),
        ("bad", False),
        ("b", True),
        ("x", True),
        ("bad", False),
        ("ok", True),
    ]
    assert changes[-1].metadata is not None and changes[-1].metadata.version == INT64_MAX


def test_from_dict_says_the_same_as_the_c_decoder() -> None:
    base = {"document_id": "a", "data_source_type": "sql", "data_source_name": "s"}
    for field, value in (("version", 2**63), ("version", -(2**63) - 1), ("attempts", 2**63)):
        with pytest.raises(ValueError, match=field):
            ChangeMeta.from_dict({**base, field: value})
        with pytest.raises(ValueError):
            ChangeMeta.decode(_raw("a", **{field: value}))
    assert ChangeMeta.from_dict({**base, "version": -(2**63)}).version == -(2**63)
