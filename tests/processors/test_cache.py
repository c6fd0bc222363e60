"""CacheInvalidationProcessor in real pillows (embedded SQLite log, memory document store)
against a real redis-server of the tests' own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from changefeed.change import Change
from changefeed.errors import PARKED, PENDING
from changefeed.processors.backoff import Backoff
from changefeed.processors.cache import CacheInvalidationProcessor, KeyTemplate
from changefeed.testing.clock import FakeClock
from tests.doubles.rig import CaseRig, PillowRig
from tests.harness.redis import RedisServer


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[CaseRig]:
    rig = PillowRig.cases(tmp_path, "cache-cases", domain="acme")
    yield rig
    rig.close()


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    yield client
    client.close()


def test_deletes_the_keys_of_changed_documents(
    rig: CaseRig, r: redis.Redis, redis_url: str
) -> None:
    r.mset({"case:c1": "x", "case:c2": "x", "case:c3": "x", "domain:acme:cases": "x"})
    r.mset({"domain:other:cases": "x", "keep": "x"})
    proc = CacheInvalidationProcessor(redis_url, ["case:{document_id}", "domain:{domain}:cases"])
    assert proc.needs_documents is False
    rig.save("c1", {"owner": "u1"})
    rig.delete("c2")
    assert rig.pillow(proc).run(forever=False) == 2
    assert sorted(r.keys()) == ["case:c3", "domain:other:cases", "keep"]
    assert rig.errors.counts() == {PENDING: 0, PARKED: 0}
    proc.close()


def test_document_fields_in_templates(rig: CaseRig, r: redis.Redis, redis_url: str) -> None:
    r.mset({"owner:u1:cases": "x", "owner:u2:cases": "x", "team:t9": "x", "case:c1": "x"})
    proc = CacheInvalidationProcessor(
        redis_url, ["owner:{doc.owner}:cases", "team:{doc.meta.team}", "case:{document_id}"]
    )
    assert proc.needs_documents is True
    rig.save("c1", {"owner": "u1", "meta": {"team": "t9"}})
    rig.save("c2", {"owner": None})  # no owner: that key is skipped, nothing fails
    rig.pillow(proc).run(forever=False)
    assert sorted(r.keys()) == ["owner:u2:cases"]
    assert rig.errors.counts() == {PENDING: 0, PARKED: 0}


def test_refresh_writes_new_values_and_deletes_on_none(
    rig: CaseRig, r: redis.Redis, redis_url: str
) -> None:
    def refresh(key: str, change: Change) -> str | None:
        doc = change.document
        return None if doc is None else f"{doc['name']}@{change.metadata.version}"  # type: ignore[union-attr]

    proc = CacheInvalidationProcessor(redis_url, ["case:{document_id}"], refresh=refresh, ttl=60)
    assert proc.needs_documents is True
    r.set("case:c2", "stale")
    rig.save("c1", {"name": "first"})
    rig.save("c1", {"name": "second"})  # same batch: the last change wins
    rig.save("c2", {"name": "gone soon"})
    rig.delete("c2")
    rig.pillow(proc).run(forever=False)
    assert r.get("case:c1") == "second@2"
    assert 0 < r.ttl("case:c1") <= 60
    assert r.exists("case:c2") == 0


def test_refresh_failure_of_one_change_goes_to_the_error_queue(
    rig: CaseRig, r: redis.Redis, redis_url: str
) -> None:
    def refresh(key: str, change: Change) -> str:
        if change.id == "bad":
            raise ValueError("cannot render")
        return "fresh"

    proc = CacheInvalidationProcessor(redis_url, ["case:{document_id}"], refresh=refresh)
    rig.save("good", {})
    rig.save("bad", {})
    rig.pillow(proc).run(forever=False)
    assert r.get("case:good") == "fresh" and r.exists("case:bad") == 0
    (record,) = rig.errors.list("cache-cases")
    assert record.document_id == "bad" and "cannot render" in record.message


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("case:{id}", "unknown field {id}"),
        ("case:{doc.}", "unknown field {doc.}"),
        ("case:{document_id!r}", "no format specs"),
        ("case:{", "Single '{'"),
        ("", "non-empty"),
    ],
)
def test_bad_templates_are_refused(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KeyTemplate(template)


def test_redis_down_makes_the_pillow_back_off_instead_of_parking(
    rig: CaseRig, tmp_path: Path
) -> None:
    server = RedisServer().start()
    try:
        proc_clock = FakeClock()
        proc = CacheInvalidationProcessor(
            server.url,
            ["case:{document_id}"],
            backoff=Backoff(retries=1, base=0.25),
            clock=proc_clock,
        )
        client = redis.Redis.from_url(server.url, decode_responses=True)
        client.mset({f"case:c{i}": "x" for i in range(10)})
        for i in range(10):
            rig.save(f"c{i}", {})
        server.stop()

        def recover(_seconds: float) -> None:
            if len(rig.clock.sleeps) == 2:
                server.start()
                client.mset({f"case:c{i}": "x" for i in range(10)})

        rig.clock.on_sleep = recover
        assert rig.pillow(proc).run(forever=False) == 10
        sleeps = rig.clock.sleeps
        assert len(sleeps) == 2 and sleeps[0] < sleeps[1], "batch backoff grows"
        assert proc_clock.sleeps[:2] == [0.25, 0.25], "bounded in-batch retries"
        assert rig.errors.counts() == {PENDING: 0, PARKED: 0}, "nothing parked while down"
        assert client.keys() == []
        client.close()
        proc.close()
    finally:
        server.close()


def test_redis_cluster_keys_on_every_node(rig: CaseRig, redis_cluster_url: str) -> None:
    """On Redis Cluster a batch's keys live on different nodes: deleted key by key, in one
    pipeline (a multi-key DEL across slots is refused)."""
    cluster = redis.RedisCluster.from_url(redis_cluster_url, decode_responses=True)
    keys = [f"case:c{i}" for i in range(30)] + ["domain:acme:cases", "keep"]
    for key in keys:
        cluster.set(key, "x")
    assert len({cluster.keyslot(k) for k in keys}) > 1
    primaries = [n for n in cluster.get_nodes() if n.server_type == "primary"]
    assert len(primaries) == 3
    proc = CacheInvalidationProcessor(
        redis_cluster_url, ["case:{document_id}", "domain:{domain}:cases"], cluster=True
    )
    for i in range(30):
        rig.save(f"c{i}", {})
    assert rig.pillow(proc).run(forever=False) == 30
    assert [k for k in keys if cluster.exists(k)] == ["keep"]
    assert rig.errors.counts() == {PENDING: 0, PARKED: 0}
    proc.close()
    cluster.close()
