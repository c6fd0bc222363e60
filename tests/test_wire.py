"""CommCare HQ's stub format: read HQ's golden stubs, write stubs HQ's consumers can parse.

The HQ side of these tests is written from HQ's ``ChangeMeta`` field definitions (a
jsonobject: ``DateTimeProperty`` parses ``%Y-%m-%dT%H:%M:%S.%fZ`` with exactly six fraction
digits, or no fraction at all), never from changefeed's code, so a bug shared by our encoder
and decoder cannot hide.
"""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from changefeed.change import HQ_LEGACY_SOURCE, Change, ChangeMeta, InvalidChangeError
from changefeed.wire import (
    InvalidWireFormatError,
    WireFormat,
    encode_hq,
    encoder_for,
    hq_datetime,
    message_key,
    wire_format,
)

GOLDEN = Path(__file__).parent / "data" / "hq_stubs.jsonl"


def golden_lines() -> list[bytes]:
    return [line for line in GOLDEN.read_bytes().splitlines() if line.strip()]


def ts(*parts: int) -> float:
    """POSIX seconds of a UTC wall-clock time (year, month, day, h, m, s, µs)."""
    return datetime(*parts, tzinfo=UTC).timestamp()  # type: ignore[misc]


# What each golden stub must decode to (every field HQ sent, in our names).
EXPECTED: list[dict[str, Any]] = [
    {  # a SQL case, with the form that changed it
        "document_id": "5d9e1f2a-case",
        "data_source_type": "sql",
        "data_source_name": "case-sql",
        "document_type": "CommCareCase",
        "document_subtype": "patient",
        "domain": "demo",
        "is_deletion": False,
        "document_rev": None,
        "publish_timestamp": ts(2026, 11, 24, 12, 0, 0, 123456),
        "original_publication_timestamp": ts(2026, 11, 24, 12, 0, 0, 123456),
        "attempts": 0,
        "associated_document_id": "8c0a7b3e-form",
        "extra": {},
    },
    {  # a deletion
        "document_id": "8c0a7b3e-form",
        "data_source_type": "sql",
        "data_source_name": "form-sql",
        "document_type": "XFormInstance-Deleted",
        "document_subtype": "http://openrosa.org/formdesigner/ABC",
        "domain": "demo",
        "is_deletion": True,
        "document_rev": None,
        "publish_timestamp": ts(2026, 11, 24, 12, 0, 1, 1),
        "original_publication_timestamp": ts(2026, 11, 24, 12, 0, 1, 1),
        "attempts": 0,
        "associated_document_id": None,
        "extra": {},
    },
    {  # a Couch document with its revision
        "document_id": "a41f77c0-user",
        "data_source_type": "couch",
        "data_source_name": "commcarehq__users",
        "document_type": "CommCareUser",
        "document_subtype": None,
        "domain": "demo",
        "is_deletion": False,
        "document_rev": "3-9f8e7d6c5b4a39281706f5e4d3c2b1a0",
        "publish_timestamp": ts(2026, 11, 24, 12, 0, 2, 500000),
        "original_publication_timestamp": ts(2026, 11, 24, 12, 0, 2, 500000),
        "attempts": 0,
        "associated_document_id": None,
        "extra": {},
    },
    {  # retried three times: published again later, first publication kept
        "document_id": "b7c3d9e1-case",
        "data_source_type": "sql",
        "data_source_name": "case-sql",
        "document_type": "CommCareCase",
        "document_subtype": "household",
        "domain": "demo",
        "is_deletion": False,
        "document_rev": None,
        "publish_timestamp": ts(2026, 11, 24, 13, 30, 0, 0),
        "original_publication_timestamp": ts(2026, 11, 24, 12, 0, 3, 654321),
        "attempts": 3,
        "associated_document_id": "c1d2e3f4-form",
        "extra": {},
    },
    {  # fields this version does not know, no fraction on the datetimes
        "document_id": "e5f6a7b8-loc",
        "data_source_type": "sql",
        "data_source_name": "location",
        "document_type": "SQLLocation",
        "document_subtype": None,
        "domain": "demo",
        "is_deletion": False,
        "document_rev": None,
        "publish_timestamp": ts(2026, 11, 24, 12, 0, 4, 0),
        "original_publication_timestamp": ts(2026, 11, 24, 12, 0, 4, 0),
        "attempts": 0,
        "associated_document_id": None,
        "extra": {"backend_id": "sql", "routing_hint": {"shard": 7, "tags": ["a", "b"]}},
    },
    {  # an old stub: source name in data_source_type, fields left out or null, an offset
        "document_id": "f0e1d2c3-form",
        "data_source_type": "sql",
        "data_source_name": "form-sql",
        "document_type": "XFormInstance",
        "document_subtype": None,
        "domain": "demo",
        "is_deletion": False,
        "document_rev": None,
        "publish_timestamp": ts(2026, 11, 24, 12, 0, 5, 250000),
        "original_publication_timestamp": ts(2026, 11, 24, 12, 0, 5, 0),
        "attempts": 0,
        "associated_document_id": None,
        "extra": {HQ_LEGACY_SOURCE: ["form-sql", "form-sql"]},
    },
]


def fields_of(meta: ChangeMeta) -> dict[str, Any]:
    return {name: getattr(meta, name) for name in EXPECTED[0]}


# -- an HQ consumer, written from HQ's ChangeMeta definition ---------------------------------

_HQ_STRINGS = (
    "document_rev",
    "data_source_type",
    "data_source_name",
    "document_subtype",
    "domain",
    "associated_document_id",
)
_HQ_DATETIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z$")


def hq_wrap(raw: bytes) -> dict[str, Any]:
    """What HQ's ``ChangeMeta.wrap(json.loads(raw))`` accepts, with Python values: datetimes
    as naive UTC ``datetime`` (HQ's convention), dynamic properties passed through."""
    data = json.loads(raw)
    assert isinstance(data, dict)
    for required in ("document_id", "data_source_type", "data_source_name"):
        assert data.get(required) not in (None, ""), required
    out = dict(data)
    for name in _HQ_STRINGS:
        assert data.get(name) is None or isinstance(data[name], str), name
    assert data.get("is_deletion") in (None, True, False)
    attempts = data.get("attempts", 0)
    assert isinstance(attempts, int) and not isinstance(attempts, bool)
    for name in ("publish_timestamp", "original_publication_datetime"):
        value = data.get(name)
        if value is None:
            continue
        assert isinstance(value, str) and _HQ_DATETIME.match(value), (name, value)
        fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if "." in value else "%Y-%m-%dT%H:%M:%SZ"
        out[name] = datetime.strptime(value, fmt)
    return out


def naive_utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)


# -- reading HQ's stubs ----------------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(EXPECTED)))
def test_golden_hq_stubs_decode_with_every_field(index: int) -> None:
    raw = golden_lines()[index]
    meta = ChangeMeta.decode(raw)
    assert fields_of(meta) == EXPECTED[index]
    change = Change.from_raw("case-sql", 0, 7, raw)
    assert change.is_valid and change.error is None and change.id == EXPECTED[index]["document_id"]


def test_golden_stubs_take_the_lenient_path_ours_the_fast_one() -> None:
    """HQ stubs (strings for timestamps) leave the C decoder; our own stubs stay on it."""
    lines = golden_lines()
    assert ChangeMeta.decode_many(lines) is None
    assert ChangeMeta.decode_array(b"[" + b",".join(lines) + b"]") is None
    plain = [i for i, e in enumerate(EXPECTED) if not e["extra"]]
    ours = [ChangeMeta.decode(lines[i]).encode() for i in plain]
    fast = ChangeMeta.decode_many(ours)
    assert fast is not None
    assert [fields_of(m) for m in fast] == [EXPECTED[i] for i in plain]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2026-11-24T12:00:00.123456Z", ts(2026, 11, 24, 12, 0, 0, 123456)),
        ("2026-11-24T12:00:00Z", ts(2026, 11, 24, 12, 0, 0, 0)),
        ("2026-11-24T12:00:00", ts(2026, 11, 24, 12, 0, 0, 0)),
        ("2026-11-24T12:00:00.123456", ts(2026, 11, 24, 12, 0, 0, 123456)),
        ("2026-11-24T12:00:00.123Z", ts(2026, 11, 24, 12, 0, 0, 123000)),
        ("2026-11-24T14:00:00.5+02:00", ts(2026, 11, 24, 12, 0, 0, 500000)),
        ("2026-11-24T07:00:00-05:00", ts(2026, 11, 24, 12, 0, 0, 0)),
        ("2026-11-24T12:00:00+00:00", ts(2026, 11, 24, 12, 0, 0, 0)),
    ],
)
def test_iso_datetimes_wherever_a_timestamp_is_expected(text: str, expected: float) -> None:
    base = {"document_id": "d", "data_source_type": "sql", "data_source_name": "s"}
    for field in ("publish_timestamp", "original_publication_timestamp"):
        meta = ChangeMeta.decode(orjson.dumps({**base, field: text}))
        assert getattr(meta, field) == expected
    meta = ChangeMeta.decode(orjson.dumps({**base, "original_publication_datetime": text}))
    assert meta.original_publication_timestamp == expected
    assert meta.extra == {}


@pytest.mark.parametrize("bad", ["yesterday", "2026-13-01T00:00:00Z", "12:00", "", True, [1]])
def test_bad_datetimes_are_refused_with_the_field_name(bad: object) -> None:
    data = {"document_id": "d", "data_source_type": "sql", "data_source_name": "s"}
    with pytest.raises(InvalidChangeError, match="publish_timestamp"):
        ChangeMeta.decode(orjson.dumps({**data, "publish_timestamp": bad}))
    with pytest.raises(InvalidChangeError, match="original_publication_datetime"):
        ChangeMeta.decode(orjson.dumps({**data, "original_publication_datetime": bad}))


def test_nulls_for_optional_fields() -> None:
    data = {
        "document_id": "d",
        "data_source_type": "couch",
        "data_source_name": "db",
        "document_rev": None,
        "document_type": None,
        "document_subtype": None,
        "domain": None,
        "is_deletion": None,
        "publish_timestamp": None,
        "attempts": None,
        "original_publication_datetime": None,
        "associated_document_id": None,
    }
    meta = ChangeMeta.decode(orjson.dumps(data))
    assert meta == ChangeMeta("d", "couch", "db")


def test_both_original_publication_names_keep_the_hq_one_in_extra() -> None:
    data = {
        "document_id": "d",
        "data_source_type": "sql",
        "data_source_name": "s",
        "original_publication_timestamp": 100.0,
        "original_publication_datetime": "2026-11-24T12:00:00Z",
    }
    meta = ChangeMeta.decode(orjson.dumps(data))
    assert meta.original_publication_timestamp == 100.0
    assert meta.extra == {"original_publication_datetime": "2026-11-24T12:00:00Z"}


@pytest.mark.parametrize(
    "legacy", ["form-sql", "case-sql", "sms", "ledger-v2", "ledger-v1", "location", "synclog-sql"]
)
def test_legacy_source_name_in_data_source_type(legacy: str) -> None:
    stub = {"document_id": "d", "data_source_type": legacy, "data_source_name": "commcarehq"}
    # HQ writes its datetimes as strings, which is what sends its stubs down the lenient path.
    raw = orjson.dumps({**stub, "publish_timestamp": "2026-11-24T12:00:00.000000Z"})
    meta = ChangeMeta.decode(raw)
    assert (meta.data_source_type, meta.data_source_name) == ("sql", legacy)
    assert meta.extra == {HQ_LEGACY_SOURCE: [legacy, "commcarehq"]}
    # Modern HQ stubs and our own are left alone.
    for kind in ("sql", "couch", "memory"):
        plain = ChangeMeta.decode(
            orjson.dumps({"document_id": "d", "data_source_type": kind, "data_source_name": legacy})
        )
        assert (plain.data_source_type, plain.data_source_name) == (kind, legacy)


# -- writing HQ's stubs ----------------------------------------------------------------------


def test_hq_encoding_is_read_by_an_hq_consumer() -> None:
    meta = ChangeMeta(
        "case-1",
        "sql",
        "case-sql",
        document_type="CommCareCase",
        document_subtype="patient",
        domain="demo",
        is_deletion=True,
        document_rev="2-abc",
        publish_timestamp=ts(2026, 11, 24, 13, 0, 0, 42),
        original_publication_timestamp=ts(2026, 11, 24, 12, 0, 0, 999999),
        attempts=2,
        associated_document_id="form-1",
        extra={"backend_id": "sql"},
    )
    raw = encoder_for("hq")(meta)
    got = hq_wrap(raw)
    assert got == {
        "document_id": "case-1",
        "document_rev": "2-abc",
        "data_source_type": "sql",
        "data_source_name": "case-sql",
        "document_type": "CommCareCase",
        "document_subtype": "patient",
        "domain": "demo",
        "is_deletion": True,
        "publish_timestamp": datetime(2026, 11, 24, 13, 0, 0, 42),
        "attempts": 2,
        "original_publication_datetime": datetime(2026, 11, 24, 12, 0, 0, 999999),
        "associated_document_id": "form-1",
        "backend_id": "sql",
    }
    assert b'"publish_timestamp":"2026-11-24T13:00:00.000042Z"' in raw
    assert b'"v"' not in raw
    assert message_key(meta) == b"case-1"


def test_hq_encoding_writes_every_declared_field_even_unset() -> None:
    got = hq_wrap(encode_hq(ChangeMeta("d", "couch", "db", publish_timestamp=1.5)))
    assert got["document_rev"] is None and got["associated_document_id"] is None
    assert got["is_deletion"] is False and got["attempts"] == 0
    # Never published before: the first publication is this one, as HQ's default does.
    assert got["publish_timestamp"] == got["original_publication_datetime"] == naive_utc(1.5)


def test_unstamped_stub_gets_the_current_time() -> None:
    before = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    got = hq_wrap(encode_hq(ChangeMeta("d", "couch", "db")))
    assert got["publish_timestamp"] >= before


@pytest.mark.parametrize("index", range(len(EXPECTED)))
def test_golden_stubs_survive_decode_and_hq_encode(index: int) -> None:
    """An HQ stub read by changefeed and written back in HQ's format means the same to HQ
    (rewritten only: an old stub's source name moves to data_source_name, a null flag
    becomes false, an offset datetime becomes UTC)."""
    raw = golden_lines()[index]
    again = hq_wrap(encode_hq(ChangeMeta.decode(raw)))
    expected = EXPECTED[index]
    assert again["publish_timestamp"] == naive_utc(expected["publish_timestamp"])
    assert again["original_publication_datetime"] == naive_utc(
        expected["original_publication_timestamp"]
    )
    for key, value in json.loads(raw).items():
        if key in ("publish_timestamp", "original_publication_datetime"):
            continue
        if key == "data_source_type" and value == "form-sql":
            assert again[key] == "sql" and again["data_source_name"] == "form-sql"
        elif key == "is_deletion" and value is None:
            assert again[key] is False
        else:
            assert again[key] == value, key


def test_hq_datetime_is_exact_to_the_microsecond() -> None:
    rng = random.Random(15)
    for _ in range(20_000):
        when = datetime(
            rng.randint(1971, 2099),
            rng.randint(1, 12),
            rng.randint(1, 28),
            rng.randint(0, 23),
            rng.randint(0, 59),
            rng.randint(0, 59),
            rng.choice([0, 1, 999999, 500000, rng.randint(0, 999999)]),
        )
        text = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        meta = ChangeMeta.decode(
            orjson.dumps(
                {
                    "document_id": "d",
                    "data_source_type": "sql",
                    "data_source_name": "s",
                    "publish_timestamp": text,
                }
            )
        )
        assert meta.publish_timestamp is not None
        assert hq_datetime(meta.publish_timestamp) == text


def test_wire_format_option_values() -> None:
    assert wire_format(None) is WireFormat.CHANGEFEED
    assert wire_format("") is WireFormat.CHANGEFEED
    assert wire_format("HQ") is WireFormat.HQ
    assert wire_format(" changefeed ") is WireFormat.CHANGEFEED
    assert encoder_for() is ChangeMeta.encode
    assert encoder_for(WireFormat.HQ) is encode_hq
    for bad in ("kafka", "json", 3):
        with pytest.raises(InvalidWireFormatError, match="unknown wire format") as info:
            wire_format(bad)
        assert "\n" not in str(info.value) and "changefeed, hq" in str(info.value)
    assert issubclass(InvalidWireFormatError, ValueError)


def test_changefeed_encoding_is_unchanged_and_carries_the_new_field() -> None:
    meta = ChangeMeta("d", "sql", "s", associated_document_id="f")
    assert encoder_for("changefeed")(meta) == meta.encode()
    assert orjson.loads(meta.encode()) == {
        "v": 1,
        "document_id": "d",
        "data_source_type": "sql",
        "data_source_name": "s",
        "associated_document_id": "f",
    }
    assert ChangeMeta.decode_many([meta.encode()]) == [meta]
