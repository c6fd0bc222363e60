"""Benchmark: decoding change stubs — ours vs. CommCare HQ's vs. plain msgspec.

Reading HQ's stubs must not slow down our own: ours stay on the C decoder (`ChangeMeta`
Struct), HQ's (ISO datetimes, their field names) go through the lenient path. In one run
this measures, medians of several rounds, stubs per second for:

- ``msgspec dict``:   ``msgspec.json.decode`` of our stubs to plain dicts (no validation):
  the floor any JSON decoder in Python has to pay;
- ``ours, decode_array``: one JSON array of our stubs (as the embedded log stores them);
- ``ours, decode_many``:  one stub per message (as Kafka delivers them);
- ``ours, decode``:       one call per stub (the one-by-one fallback);
- ``hq, decode``:         HQ stubs one by one (the path HQ's stubs take);
- ``hq, decode_many``:    HQ stubs as a batch (tries C, falls back one by one).

    python bench/stub_decode.py [--stubs 100000] [--rounds 7]
                                [--against OLD_CHANGE_PY --ab-rounds 15]

``--against`` loads another version of ``change.py`` (e.g. ``git show
HEAD~1:src/changefeed/change.py > old_change.py``) next to this one and alternates
``decode_array`` and ``decode_many`` of the same bytes between the two, round by round: the
before/after comparison for our own stubs in one process.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import msgspec

from changefeed.change import ChangeMeta
from changefeed.wire import encode_hq


def make_stubs(n: int) -> list[ChangeMeta]:
    """Stubs like a busy case/form feed: ids, a domain, a type, timestamps, some retries."""
    base = datetime(2026, 11, 24, 12, tzinfo=UTC)

    def at(micros: int) -> float:  # microsecond-exact, as HQ's datetimes are
        return (base + timedelta(microseconds=micros)).timestamp()

    return [
        ChangeMeta(
            f"{i:08x}-4f1c-4a8e-9d3b-{i * 7919 % 10**12:012d}",
            "sql",
            "case-sql" if i % 2 else "form-sql",
            document_type="CommCareCase" if i % 2 else "XFormInstance",
            document_subtype="patient",
            domain="demo-project",
            publish_timestamp=at(i * 1000 + 1),
            original_publication_timestamp=at(i * 1000),
            attempts=int(i % 3 == 0),
            associated_document_id=f"form-{i}" if i % 2 else None,
        )
        for i in range(n)
    ]


def rate(fn: Callable[[], object], n: int, rounds: int) -> tuple[float, list[float]]:
    """(median stubs/s, every round's stubs/s)."""
    fn()  # warm up
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates), rates


def compare_versions(path: str, n: int, rounds: int) -> None:
    """Our stubs through this change.py and another one, alternating round by round."""
    spec = importlib.util.spec_from_file_location("changefeed_change_other", path)
    assert spec is not None and spec.loader is not None
    other = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = other
    spec.loader.exec_module(other)
    stubs = make_stubs(n)
    for m in stubs:  # fields both versions know
        m.associated_document_id = None
    raw = [m.encode() for m in stubs]
    array = b"[" + b",".join(raw) + b"]"
    assert len(other.ChangeMeta.decode_many(raw)) == n
    versions = {"other": other.ChangeMeta, "this": ChangeMeta}
    got: dict[str, list[float]] = {}
    for _ in range(rounds):
        for version, cls in versions.items():
            for how, call in (
                ("decode_array", lambda c=cls: c.decode_array(array)),
                ("decode_many", lambda c=cls: c.decode_many(raw)),
            ):
                start = time.perf_counter()
                call()
                got.setdefault(f"{version:5s} {how}", []).append(n / (time.perf_counter() - start))
    print(f"\nthis change.py vs {path}, {rounds} alternating rounds:")
    for name, rates in got.items():
        print(
            f"{name:28s} median {statistics.median(rates) / 1e6:5.2f}"
            f"  best {max(rates) / 1e6:5.2f} M stubs/s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stubs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--against", metavar="CHANGE_PY", help="another change.py to compare")
    parser.add_argument("--ab-rounds", type=int, default=15)
    args = parser.parse_args()
    n, rounds = args.stubs, args.rounds

    stubs = make_stubs(n)
    ours = [m.encode() for m in stubs]
    hq = [encode_hq(m) for m in stubs]
    array = b"[" + b",".join(ours) + b"]"
    decode, decode_many, decode_array = (
        ChangeMeta.decode,
        ChangeMeta.decode_many,
        ChangeMeta.decode_array,
    )
    plain = msgspec.json.Decoder().decode

    # Sanity: both formats decode to the same stubs, and ours stay on the C path.
    assert decode_many(ours) == stubs and decode_array(array) == stubs
    assert [decode(r) for r in hq] == stubs
    assert decode_many(hq) is None

    cases: list[tuple[str, Callable[[], object]]] = [
        ("msgspec dict (baseline)", lambda: [plain(r) for r in ours]),
        ("ours, decode_array", lambda: decode_array(array)),
        ("ours, decode_many", lambda: decode_many(ours)),
        ("ours, decode", lambda: [decode(r) for r in ours]),
        ("hq, decode", lambda: [decode(r) for r in hq]),
        ("hq, decode_many + fallback", lambda: decode_many(hq) or [decode(r) for r in hq]),
    ]
    print(f"{n} stubs, {rounds} rounds; our stub {len(ours[1])} B, HQ stub {len(hq[1])} B")
    results = {}
    for name, fn in cases:
        median, rates = rate(fn, n, rounds)
        results[name] = median
        each = " ".join(f"{r / 1e6:.2f}" for r in rates)
        print(f"{name:28s} {median / 1e6:6.2f} M stubs/s   (rounds: {each})")
    base = results["msgspec dict (baseline)"]
    print()
    for name, median in results.items():
        print(f"{name:28s} {median / base:5.2f} x baseline   {1e9 / median:7.0f} ns/stub")
    if args.against:
        compare_versions(args.against, n, args.ab_rounds)


if __name__ == "__main__":
    main()
