"""The wire contract: ChangeMeta encoding, strictness, forward compatibility; Change's lazy fetch."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from changefeed.change import SCHEMA_VERSION, Change, ChangeMeta, InvalidChangeError


def full_meta() -> ChangeMeta:
    return ChangeMeta(
        document_id="doc-1",
        data_source_type="sql",
        data_source_name="forms",
        document_type="form",
        document_subtype="visit",
        domain="acme",
        is_deletion=True,
        document_rev="3-abc",
        version=7,
        publish_timestamp=1700000000.5,
        original_publication_timestamp=1690000000.0,
        attempts=2,
    )


def test_round_trip_keeps_every_field() -> None:
    meta = full_meta()
    decoded = ChangeMeta.decode(meta.encode())
    assert decoded == meta


def test_minimal_stub_round_trip_and_defaults() -> None:
    meta = ChangeMeta("d", "memory", "store")
    data = orjson.loads(meta.encode())
    assert data == {
        "v": SCHEMA_VERSION,
        "document_id": "d",
        "data_source_type": "memory",
        "data_source_name": "store",
    }
    decoded = ChangeMeta.decode(meta.encode())
    assert decoded == meta
    assert decoded.is_deletion is False
    assert decoded.attempts == 0
    assert decoded.version is None


def test_schema_version_is_written() -> None:
    assert orjson.loads(full_meta().encode())["v"] == SCHEMA_VERSION


def test_unknown_fields_are_kept_and_re_encoded() -> None:
    raw = orjson.dumps(
        {
            "v": SCHEMA_VERSION + 1,
            "document_id": "d",
            "data_source_type": "sql",
            "data_source_name": "s",
            "new_field": {"x": [1, 2]},
            "flag": True,
        }
    )
    meta = ChangeMeta.decode(raw)
    assert meta.extra == {"new_field": {"x": [1, 2]}, "flag": True}
    again = orjson.loads(meta.encode())
    assert again["new_field"] == {"x": [1, 2]} and again["flag"] is True


_BASE = b'"document_id": "d", "data_source_type": "sql", "data_source_name": "s"'


@pytest.mark.parametrize(
    "raw, fast, extra",
    [
        (b"{" + _BASE + b"}", True, set()),
        (full_meta().encode(), True, set()),
        (b'{"v": 1, "publish_timestamp": 17, ' + _BASE + b"}", True, set()),
        (b'{"v": "two", ' + _BASE + b"}", False, set()),
        (b'{"extra": {"a": 1}, ' + _BASE + b"}", False, {"extra"}),
        (b'{"big": 1180591620717411303424, ' + _BASE + b"}", False, {"big"}),
    ],
)
def test_fast_and_lenient_decoding_agree(raw: bytes, fast: bool, extra: set[str]) -> None:
    """Stubs decode in C when they hold only known fields and through `from_dict` otherwise;
    both give the same stub (an ``extra`` key on the wire is an unknown field too)."""
    lenient = ChangeMeta.from_dict(orjson.loads(raw))
    assert ChangeMeta.decode(raw) == lenient
    many = ChangeMeta.decode_many([raw, raw])
    array = ChangeMeta.decode_array(b"[" + raw + b"," + raw + b"]")
    if fast:
        assert many == [lenient, lenient] and array == [lenient, lenient]
    else:  # the batch decoders hand such stubs to the one-by-one path
        assert many is None and array is None
    assert set(lenient.extra) == extra


def test_batch_decoders_refuse_invalid_stubs() -> None:
    good = ChangeMeta("d", "sql", "s").encode()
    assert ChangeMeta.decode_many([good, b"{broken"]) is None
    assert ChangeMeta.decode_many([good, b'{"document_id": ""}']) is None
    assert ChangeMeta.decode_array(b'[{"document_id": "d"}]') is None
    assert ChangeMeta.decode_many([]) == []


def test_encoding_matches_the_documented_form() -> None:
    """``encode`` (msgspec, in C) writes what ``to_dict`` describes, schema version first."""
    for meta in (full_meta(), ChangeMeta("d", "sql", "s"), ChangeMeta("d", "sql", "s", attempts=0)):
        raw = meta.encode()
        assert raw.startswith(b'{"v":')
        assert orjson.loads(raw) == meta.to_dict()
    odd = ChangeMeta.decode(orjson.dumps({**full_meta().to_dict(), "v": 9, "new": 1}))
    assert orjson.loads(odd.encode()) == {**full_meta().to_dict(), "new": 1}


def test_decode_accepts_str() -> None:
    assert ChangeMeta.decode(full_meta().encode().decode()).document_id == "doc-1"


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"a string"', "JSON object"),
        (b'{"data_source_type": "sql", "data_source_name": "s"}', "document_id"),
        (b'{"document_id": "", "data_source_type": "sql", "data_source_name": "s"}', "document_id"),
        (b'{"document_id": 5, "data_source_type": "sql", "data_source_name": "s"}', "document_id"),
        (b'{"document_id": "d", "data_source_name": "s"}', "data_source_type"),
        (b'{"document_id": "d", "data_source_type": "sql"}', "data_source_name"),
    ],
)
def test_invalid_stubs_raise(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidChangeError, match=reason):
        ChangeMeta.decode(raw)


@pytest.mark.parametrize(
    "field, value",
    [
        ("document_type", 3),
        ("document_subtype", ["x"]),
        ("domain", {}),
        ("document_rev", 1),
        ("is_deletion", "yes"),
        ("is_deletion", 1),
        ("version", "7"),
        ("version", 1.5),
        ("version", True),
        ("publish_timestamp", "now"),
        ("publish_timestamp", False),
        ("original_publication_timestamp", [1]),
        ("attempts", -1),
        ("attempts", "2"),
        ("attempts", True),
    ],
)
def test_wrong_types_raise(field: str, value: Any) -> None:
    data = {"document_id": "d", "data_source_type": "sql", "data_source_name": "s", field: value}
    with pytest.raises(InvalidChangeError, match=field):
        ChangeMeta.decode(orjson.dumps(data))


def test_constructor_rejects_missing_required() -> None:
    with pytest.raises(InvalidChangeError):
        ChangeMeta("", "sql", "s")


def test_stamp_unset_keeps_original_publication() -> None:
    meta = ChangeMeta("d", "sql", "s")
    meta.stamp_unset(100.0)
    assert (meta.publish_timestamp, meta.original_publication_timestamp) == (100.0, 100.0)
    meta.publish_timestamp = None  # published again, as the republish processor does
    meta.stamp_unset(200.0)
    assert (meta.publish_timestamp, meta.original_publication_timestamp) == (200.0, 100.0)


def test_change_holds_the_document_it_is_given() -> None:
    change = Change("form", 0, 5, ChangeMeta("doc-1", "memory", "count"))
    assert not change.has_document and change.document is None
    change.set_document({"n": 2})
    assert change.has_document and change.document == {"n": 2}
    assert (change.topic, change.partition, change.offset, change.id) == ("form", 0, 5, "doc-1")
    assert change.topic_partition == ("form", 0)


def test_from_raw_invalid_stub_carries_error() -> None:
    change = Change.from_raw("meta", 1, 9, b"{broken", key="k1")
    assert not change.is_valid
    assert change.metadata is None
    assert change.raw == b"{broken"
    assert change.id == "k1"
    assert change.error is not None and "JSON" in change.error


def test_from_raw_valid_stub() -> None:
    change = Change.from_raw("meta", 1, 9, full_meta().encode(), key="doc-1")
    assert change.is_valid and change.id == "doc-1" and change.deleted
    assert change.error is None
