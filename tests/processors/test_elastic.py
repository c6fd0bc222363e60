"""ElasticProcessor in real pillows (embedded SQLite log, memory document store) against the
Elasticsearch API of noida-db."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from elasticsearch import Elasticsearch

from changefeed.errors import PARKED, PENDING
from changefeed.processors.backoff import Backoff
from changefeed.processors.elastic import ElasticProcessor, document_version, index_name
from changefeed.stores.memory import MemoryDocumentStore
from changefeed.testing.clock import FakeClock
from tests.doubles.rig import CaseRig, PillowRig
from tests.harness.elasticsearch import NoidaElasticsearch

MAPPINGS = {"properties": {"name": {"type": "keyword"}, "count": {"type": "integer"}}}


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[CaseRig]:
    rig = PillowRig.cases(tmp_path, "es-cases")
    yield rig
    rig.close()


def processor(url: str, alias: str, **options: Any) -> ElasticProcessor:
    options.setdefault("mappings", MAPPINGS)
    options.setdefault("backoff", Backoff(retries=2, base=0.01))
    options.setdefault("clock", FakeClock())
    return ElasticProcessor(url, alias, **options)


def source(es: Elasticsearch, alias: str, doc_id: str) -> dict[str, Any] | None:
    found = es.options(ignore_status=404).get(index=alias, id=doc_id)
    return found["_source"] if found.get("found") else None


def test_indexes_and_deletes_by_id(
    rig: CaseRig, es: Elasticsearch, elasticsearch_url: str, es_alias: str
) -> None:
    proc = processor(elasticsearch_url, es_alias)
    for i in range(5):
        rig.save(f"c{i}", {"name": f"case {i}", "count": i})
    rig.save("c1", {"name": "renamed", "count": 10})
    rig.delete("c3")
    assert rig.pillow(proc).run(forever=False) == 7

    es.indices.refresh(index=es_alias)
    assert es.count(index=es_alias)["count"] == 4
    assert source(es, es_alias, "c1") == {"name": "renamed", "count": 10}
    assert source(es, es_alias, "c3") is None
    hit = es.get(index=es_alias, id="c4")
    assert hit["_version"] == 1 and hit["_index"] == proc.index
    assert rig.errors.counts() == {PENDING: 0, PARKED: 0}
    proc.close()


def test_stale_and_replayed_changes_never_overwrite_newer_data(
    rig: CaseRig, es: Elasticsearch, elasticsearch_url: str, es_alias: str
) -> None:
    # A lagging replica still holds version 1 of the document the primary has at version 2.
    replica = rig.stores.register(MemoryDocumentStore("replica"))
    assert isinstance(replica, MemoryDocumentStore)
    replica.save("c1", {"name": "old", "count": 1})
    rig.store.save("c1", {"name": "old", "count": 1})
    rig.save("c1", {"name": "new", "count": 2})
    proc = processor(elasticsearch_url, es_alias)
    pillow = rig.pillow(proc)
    pillow.run(forever=False)

    rig.publish(rig.stub("c1", 1, source="replica"))  # a late change of the older version
    rig.publish(rig.stub("c1", 1, deleted=True))  # a late deletion, older than what is indexed
    assert pillow.run(forever=False) == 2

    # Replay the whole log from the start: every write is older or equal, so a no-op.
    rig.checkpoints.set(
        "es-cases", {tp: 0 for tp in rig.checkpoints.get("es-cases")}, reason="test"
    )
    assert pillow.run(forever=False) == 3

    got = es.get(index=es_alias, id="c1")
    assert got["_source"] == {"name": "new", "count": 2}
    assert got["_version"] == 2
    assert rig.errors.counts() == {PENDING: 0, PARKED: 0}, "409 conflicts are success"


def test_bulk_partial_failure_goes_to_error_queue_while_the_rest_index(
    rig: CaseRig, es: Elasticsearch, elasticsearch_url: str, es_alias: str
) -> None:
    proc = processor(elasticsearch_url, es_alias)
    rig.save("good1", {"name": "a", "count": 1})
    rig.save("bad", {"name": "b", "count": "not a number"})  # conflicts with the mapping
    rig.save("good2", {"name": "c", "count": 3})
    pillow = rig.pillow(proc)
    pillow.run(forever=False)

    es.indices.refresh(index=es_alias)
    assert es.count(index=es_alias)["count"] == 2
    (record,) = rig.errors.list("es-cases")
    assert record.document_id == "bad"
    assert record.processor == f"elastic:{es_alias}"
    assert record.status == PARKED  # a document Elasticsearch refuses will not heal by retrying
    assert "400" in record.message and "count" in record.message
    # An operator retries it by hand (errors retry --id, the dashboard): refused again, it
    # stays parked rather than going back on the retry schedule.
    rig.errors.make_due(ids=[record.id])
    assert pillow.runner.retry_errors(ids=[record.id]) == (0, 1)
    again = rig.errors.get(record.id)
    assert again is not None and (again.status, again.attempts) == (PARKED, 2)


def test_transform_hook_shapes_documents_and_none_deletes(
    rig: CaseRig, es: Elasticsearch, elasticsearch_url: str, es_alias: str
) -> None:
    def transform(doc: dict[str, Any]) -> dict[str, Any] | None:
        if doc.get("closed"):
            return None
        return {"name": doc["name"].upper(), "count": len(doc["name"])}

    proc = processor(elasticsearch_url, es_alias, transform=transform)
    pillow = rig.pillow(proc)
    rig.save("open", {"name": "abc"})
    rig.save("closing", {"name": "xy"})
    pillow.run(forever=False)
    assert source(es, es_alias, "closing") == {"name": "XY", "count": 2}

    rig.save("closing", {"name": "xy", "closed": True})
    pillow.run(forever=False)
    assert source(es, es_alias, "open") == {"name": "ABC", "count": 3}
    assert source(es, es_alias, "closing") is None


def test_version_from_the_document(
    rig: CaseRig, es: Elasticsearch, elasticsearch_url: str, es_alias: str
) -> None:
    proc = processor(
        elasticsearch_url, es_alias, version=document_version(lambda doc: doc.get("server_version"))
    )
    rig.save("c1", {"name": "x", "server_version": 40})
    rig.pillow(proc).run(forever=False)
    assert es.get(index=es_alias, id="c1")["_version"] == 40


def test_bootstrap_is_idempotent_and_uses_an_alias(
    es: Elasticsearch, elasticsearch_url: str, es_alias: str
) -> None:
    first = processor(elasticsearch_url, es_alias, settings={"number_of_shards": 1})
    first.bootstrap()
    first.bootstrap()
    again = processor(elasticsearch_url, es_alias, settings={"number_of_shards": 1})
    again.bootstrap()  # another process, same spec: nothing to do
    assert again.index == first.index and first.index.startswith(f"{es_alias}_")
    assert list(es.indices.get_alias(name=es_alias).body) == [first.index]
    assert es.indices.get_mapping(index=first.index)[first.index]["mappings"] == MAPPINGS

    # The alias is missing but the versioned index is there: bootstrap only adds the alias.
    es.indices.delete_alias(index=first.index, name=es_alias)
    processor(elasticsearch_url, es_alias, settings={"number_of_shards": 1}).bootstrap()
    assert list(es.indices.get_alias(name=es_alias).body) == [first.index]

    # An explicit index version names the index; a changed mapping does not move the alias.
    pinned = processor(elasticsearch_url, f"{es_alias}-p", index_version="v3")
    pinned.bootstrap()
    assert list(es.indices.get_alias(name=f"{es_alias}-p").body) == [f"{es_alias}-p_v3"]
    changed = processor(elasticsearch_url, es_alias, mappings={"properties": {}})
    assert changed.index != first.index
    changed.bootstrap()
    assert list(es.indices.get_alias(name=es_alias).body) == [first.index]
    for proc in (first, again, pinned, changed):
        proc.close()


def test_bad_names_and_an_index_in_place_of_the_alias_are_refused(
    es: Elasticsearch, elasticsearch_url: str, es_alias: str
) -> None:
    with pytest.raises(ValueError, match="invalid alias name 'Cases'"):
        processor(elasticsearch_url, "Cases")
    with pytest.raises(ValueError, match="invalid index name"):
        index_name("a/b")
    es.indices.create(index=es_alias)
    with pytest.raises(RuntimeError, match="is an index, not an alias"):
        processor(elasticsearch_url, es_alias).bootstrap()


def test_server_down_makes_the_pillow_back_off_instead_of_parking(
    rig: CaseRig, tmp_path: Path
) -> None:
    (tmp_path / "es").mkdir()
    server = NoidaElasticsearch(data_dir=tmp_path / "es").start()
    try:
        proc_clock = FakeClock()
        proc = processor(
            server.url, "cases", backoff=Backoff(retries=2, base=0.5), clock=proc_clock
        )

        def recover(_seconds: float) -> None:
            if len(rig.clock.sleeps) == 2:
                server.start()

        rig.clock.on_sleep = recover
        pillow = rig.pillow(proc)
        for i in range(20):
            rig.save(f"c{i}", {"name": str(i), "count": i})
        server.stop()
        assert pillow.run(forever=False) == 20

        sleeps = rig.clock.sleeps
        assert len(sleeps) == 2 and sleeps[0] < sleeps[1], "batch backoff grows"
        assert proc_clock.sleeps[:2] == [0.5, 1.0], "bounded in-batch retries with backoff"
        assert rig.errors.counts() == {PENDING: 0, PARKED: 0}, "nothing parked while down"
        es = Elasticsearch(server.url)
        es.indices.refresh(index="cases")
        assert es.count(index="cases")["count"] == 20
        es.close()
        proc.close()
    finally:
        server.close()


class Overloaded:
    """A fault-injecting HTTP proxy in front of the real server: the first ``whole`` bulk
    requests are answered 429 outright, then the first ``items`` bulk answers have their first
    item turned into a 429 (the document was in fact indexed: its retry then meets a 409)."""

    def __init__(self, upstream: str, whole: int = 0, items: int = 0) -> None:
        self.upstream = upstream
        self.whole = whole
        self.items = items
        self.bulk_calls = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, payload = proxy.answer(self.command, self.path, dict(self.headers), body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Elastic-Product", "Elasticsearch")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _forward

        return Handler

    def answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes]:
        is_bulk = path.split("?")[0].endswith("/_bulk")
        if is_bulk:
            self.bulk_calls += 1
            if self.bulk_calls <= self.whole:
                return 429, b'{"error":{"type":"es_rejected_execution_exception"},"status":429}'
        keep = {k: v for k, v in headers.items() if k.lower() in ("content-type", "accept")}
        resp = httpx.request(method, self.upstream + path, headers=keep, content=body)
        payload = resp.content
        if is_bulk and self.bulk_calls <= self.whole + self.items:
            answer = json.loads(payload)
            first = next(iter(answer["items"][0].values()))
            first.clear()
            first.update({"status": 429, "error": {"type": "es_rejected_execution_exception"}})
            answer["errors"] = True
            payload = json.dumps(answer).encode()
        return resp.status_code, payload

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def overloaded(elasticsearch_url: str) -> Iterator[Callable[..., Overloaded]]:
    made: list[Overloaded] = []

    def make(**options: int) -> Overloaded:
        made.append(Overloaded(elasticsearch_url, **options))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


def test_429s_are_retried_with_backoff(
    rig: CaseRig,
    es: Elasticsearch,
    elasticsearch_url: str,
    es_alias: str,
    overloaded: Callable[..., Overloaded],
) -> None:
    processor(elasticsearch_url, es_alias).bootstrap()
    proxy = overloaded(whole=2, items=1)
    proc_clock = FakeClock()
    proc = processor(proxy.url, es_alias, backoff=Backoff(retries=3, base=0.5), clock=proc_clock)
    for i in range(5):
        rig.save(f"c{i}", {"name": str(i), "count": i})
    rig.pillow(proc).run(forever=False)

    assert proxy.bulk_calls == 4, "two whole 429s, one item 429, then the item alone"
    assert proc_clock.sleeps == [0.5, 1.0, 2.0]
    es.indices.refresh(index=es_alias)
    assert es.count(index=es_alias)["count"] == 5
    assert rig.errors.counts() == {PENDING: 0, PARKED: 0}


def test_persistent_429s_hand_over_to_the_pillow_backoff(
    rig: CaseRig, elasticsearch_url: str, es_alias: str, overloaded: Callable[..., Overloaded]
) -> None:
    processor(elasticsearch_url, es_alias).bootstrap()
    proxy = overloaded(whole=3)
    proc = processor(proxy.url, es_alias, backoff=Backoff(retries=1, base=0.1))
    for i in range(3):
        rig.save(f"c{i}", {"name": str(i), "count": i})
    rig.pillow(proc).run(forever=False)
    assert len(rig.clock.sleeps) == 1, "the pillow waited once, then the batch went through"
    assert proxy.bulk_calls == 4
    assert rig.errors.counts() == {PENDING: 0, PARKED: 0}


def test_missing_alias_waits_for_bootstrap_instead_of_creating_an_index(
    rig: CaseRig, es: Elasticsearch, elasticsearch_url: str, es_alias: str
) -> None:
    proc = processor(elasticsearch_url, es_alias)
    rig.bootstrap = False
    # While the pillow backs off, an operator runs `changefeed bootstrap`.
    pillow = rig.pillow(proc, clock=FakeClock(on_sleep=lambda _s: proc.bootstrap()))
    for i in range(3):
        rig.save(f"c{i}", {"name": str(i), "count": i})
    pillow.run(forever=False)
    assert list(es.indices.get_alias(name=es_alias).body) == [proc.index]
    es.indices.refresh(index=es_alias)
    assert es.count(index=es_alias)["count"] == 3
    assert rig.errors.counts() == {PENDING: 0, PARKED: 0}
