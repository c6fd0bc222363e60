"""ElasticProcessor vs the official client's own ``elasticsearch.helpers.bulk``, side by side.

Both index the same N documents with the same external versions and the same chunk size
into a fresh index per round; rounds alternate between the two so machine noise hits both.
Prints per-side medians (seconds and docs/s) and the ratio processor/helper throughput.
Starts its own Elasticsearch-API server (noida-db, the binary inside its wheel).

    python bench/elastic_processor.py [--docs 20000] [--rounds 7] [--chunk 1000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from elasticsearch import Elasticsearch, helpers

from changefeed.change import Change, ChangeMeta
from changefeed.processors.elastic import ElasticProcessor
from changefeed.testing.servers import NoidaServer

MAPPINGS = {
    "properties": {
        "name": {"type": "text"},
        "status": {"type": "keyword"},
        "owner_id": {"type": "keyword"},
        "opened_on": {"type": "date"},
        "priority": {"type": "integer"},
        "score": {"type": "float"},
    }
}


def documents(n: int) -> list[tuple[str, int, dict[str, Any]]]:
    statuses = ("open", "closed", "pending")
    return [
        (
            f"case-{i:08d}",
            i % 7 + 1,
            {
                "name": f"case number {i} for household {i % 977}",
                "status": statuses[i % 3],
                "owner_id": f"user-{i % 113}",
                "opened_on": f"2025-{i % 12 + 1:02d}-{i % 28 + 1:02d}",
                "priority": i % 5,
                "score": (i % 1000) / 10.0,
                "tags": ["a", "b", f"t{i % 17}"],
                "household": {"size": i % 9, "village": f"v{i % 31}"},
            },
        )
        for i in range(n)
    ]


def changes_for(docs: list[tuple[str, int, dict[str, Any]]]) -> list[Change]:
    out = []
    for offset, (doc_id, version, doc) in enumerate(docs):
        change = Change("case", 0, offset, ChangeMeta(doc_id, "sql", "cases", version=version))
        change.set_document(doc)
        out.append(change)
    return out


def run_processor(es: Elasticsearch, changes: list[Change], round_no: int, chunk: int) -> float:
    proc = ElasticProcessor(
        es, "bench-proc", mappings=MAPPINGS, index_version=str(round_no), chunk_size=chunk
    )
    proc.bootstrap()
    started = time.perf_counter()
    for start in range(0, len(changes), chunk):  # one pillow batch per chunk
        failures = proc.process_changes(changes[start : start + chunk])
        assert not failures, failures[:3]
    elapsed = time.perf_counter() - started
    es.indices.refresh(index=proc.index)
    assert es.count(index=proc.index)["count"] == len(changes)
    es.indices.delete(index=proc.index)
    return elapsed


def run_helper(
    es: Elasticsearch, docs: list[tuple[str, int, dict[str, Any]]], round_no: int, chunk: int
) -> float:
    index = f"bench-helper_{round_no}"
    es.indices.create(index=index, mappings=MAPPINGS)
    actions = (
        {
            "_op_type": "index",
            "_index": index,
            "_id": doc_id,
            "version": version,
            "version_type": "external",
            "_source": doc,
        }
        for doc_id, version, doc in docs
    )
    started = time.perf_counter()
    ok, errors = helpers.bulk(es, actions, chunk_size=chunk, max_chunk_bytes=10 * 1024 * 1024)
    elapsed = time.perf_counter() - started
    assert ok == len(docs) and not errors
    es.indices.refresh(index=index)
    assert es.count(index=index)["count"] == len(docs)
    es.indices.delete(index=index)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--chunk", type=int, default=1000)
    args = parser.parse_args()

    docs = documents(args.docs)
    with NoidaServer("elasticsearch") as server:
        url = server.elasticsearch_url
        es = Elasticsearch(url, request_timeout=120)
        run_helper(es, docs[: args.chunk], 999, args.chunk)  # warm up both paths
        run_processor(es, changes_for(docs[: args.chunk]), 999, args.chunk)
        times: dict[str, list[float]] = {"processor": [], "helpers.bulk": []}
        for r in range(args.rounds):
            # Change objects are built outside the timing: a pillow has them already.
            changes = changes_for(docs)
            order = ["processor", "helpers.bulk"]
            if r % 2:
                order.reverse()
            for name in order:
                if name == "processor":
                    times[name].append(run_processor(es, changes, r, args.chunk))
                else:
                    times[name].append(run_helper(es, docs, r, args.chunk))
        es.close()

    print(f"{args.docs} documents, chunk {args.chunk}, {args.rounds} alternating rounds")
    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name, m in med.items():
        spread = ", ".join(f"{t:.3f}" for t in times[name])
        print(f"  {name:13s} median {m:.3f}s  {args.docs / m:9.0f} docs/s   [{spread}]")
    print(
        f"  ratio processor/helpers.bulk throughput: {med['helpers.bulk'] / med['processor']:.2f}x"
    )


if __name__ == "__main__":
    main()
