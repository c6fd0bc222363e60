"""CouchChangeFeed against pouchdb-server: paging, continuous with heartbeats, opaque seqs,
and reconnects after dropped, silent or refused connections (through a TCP proxy)."""

from __future__ import annotations

import threading

import httpx
import pytest

from changefeed.backoff import Backoff
from changefeed.couchdb import CouchDatabase, CouchError, CouchUnavailableError
from changefeed.sources.couch import (
    CouchChange,
    CouchChangeFeed,
    seq_param,
)
from tests.harness._util import wait_until
from tests.harness.couchdb import TcpProxy

FAST = Backoff(base=0.05, cap=0.2)


def _put(db_url: str, doc_id: str, **fields: object) -> None:
    httpx.put(f"{db_url}/{doc_id}", json=fields).raise_for_status()


def _bulk(db_url: str, ids: list[str]) -> None:
    docs = [{"_id": i, "doc_type": "case"} for i in ids]
    httpx.post(f"{db_url}/_bulk_docs", json={"docs": docs}).raise_for_status()


class Follower:
    """Runs ``iter_changes(forever=True)`` in a thread, collecting what it yields."""

    def __init__(self, feed: CouchChangeFeed, since: object = None) -> None:
        self.feed = feed
        self.changes: list[CouchChange] = []
        self.idle = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(since,), daemon=True)
        self.thread.start()

    def _run(self, since: object) -> None:
        try:
            for item in self.feed.iter_changes(since, forever=True):
                if item is None:
                    self.idle += 1
                else:
                    self.changes.append(item)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.changes]

    def stop(self) -> None:
        self.feed.stop()
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.feed.close()


def test_catch_up_pages_and_resumes_from_opaque_seq(couch_db: str) -> None:
    _bulk(couch_db, [f"d{i}" for i in range(7)])
    rev = httpx.get(f"{couch_db}/d3").json()["_rev"]
    httpx.delete(f"{couch_db}/d3", params={"rev": rev}).raise_for_status()
    feed = CouchChangeFeed(couch_db, page_size=3)
    changes = [c for c in feed.iter_changes() if c is not None]
    # d3 appears once, at its newest seq, as a deletion.
    assert [c.id for c in changes] == ["d0", "d1", "d2", "d4", "d5", "d6", "d3"]
    assert (
        changes[-1].deleted and changes[0].doc is not None and changes[0].doc["doc_type"] == "case"
    )
    assert changes[0].rev is not None and changes[0].rev.startswith("1-")
    seq = feed.last_seq
    assert seq == changes[-1].seq
    _put(couch_db, "late", doc_type="form")
    after = [c for c in feed.iter_changes(seq) if c is not None]
    assert [c.id for c in after] == ["late"]
    assert feed.pending(seq) == 1 and feed.pending(after[-1].seq) == 0
    feed.close()


def test_without_include_docs(couch_db: str) -> None:
    _bulk(couch_db, ["a"])
    feed = CouchChangeFeed(couch_db, include_docs=False)
    (change,) = [c for c in feed.iter_changes() if c is not None]
    assert change.id == "a" and change.doc is None
    feed.close()


def test_continuous_follows_new_writes_with_heartbeats(couch_db: str) -> None:
    _bulk(couch_db, ["old"])
    follower = Follower(CouchChangeFeed(couch_db, heartbeat=0.1))
    try:
        wait_until(lambda: follower.ids == ["old"], "the backlog", timeout=20)
        wait_until(lambda: follower.idle >= 3, "heartbeats (idle sentinels)", timeout=20)
        for i in range(5):
            _put(couch_db, f"new{i}", doc_type="case")
        wait_until(lambda: len(follower.ids) == 6, "new writes", timeout=20)
        assert follower.ids == ["old"] + [f"new{i}" for i in range(5)]
        assert follower.feed.reconnects == 0
    finally:
        follower.stop()
    assert follower.error is None


def test_reconnects_after_dropped_connection(couch_db: str, couchdb_proxy: TcpProxy) -> None:
    name = couch_db.rsplit("/", 1)[1]
    feed = CouchChangeFeed(
        f"http://127.0.0.1:{couchdb_proxy.port}/{name}", heartbeat=0.1, backoff=FAST
    )
    follower = Follower(feed)
    try:
        _put(couch_db, "a", doc_type="case")
        wait_until(lambda: follower.ids == ["a"], "first change", timeout=20)
        couchdb_proxy.refusing = True
        couchdb_proxy.drop()
        _put(couch_db, "b", doc_type="case")  # written while the bridge is cut off
        wait_until(lambda: feed.reconnects >= 2, "reconnect attempts while refused", timeout=20)
        couchdb_proxy.refusing = False
        _put(couch_db, "c", doc_type="case")
        wait_until(lambda: len(follower.ids) >= 3, "changes after reconnect", timeout=20)
        assert follower.ids == ["a", "b", "c"]  # nothing lost, nothing repeated
    finally:
        follower.stop()
    assert follower.error is None


def test_silent_connection_hits_read_timeout(couch_db: str, couchdb_proxy: TcpProxy) -> None:
    """Servers may stop sending even heartbeats; our read timeout notices and reconnects."""
    name = couch_db.rsplit("/", 1)[1]
    feed = CouchChangeFeed(
        f"http://127.0.0.1:{couchdb_proxy.port}/{name}",
        heartbeat=0.1,
        read_timeout=0.5,
        backoff=FAST,
    )
    follower = Follower(feed)
    try:
        wait_until(lambda: follower.idle >= 1, "the continuous feed", timeout=20)
        connections = couchdb_proxy.connections
        couchdb_proxy.stall()
        _put(couch_db, "x", doc_type="case")
        wait_until(lambda: follower.ids == ["x"], "the change, after a reconnect", timeout=20)
        assert feed.reconnects >= 1 and couchdb_proxy.connections > connections
    finally:
        follower.stop()


def test_gives_up_after_max_retries(couchdb_proxy: TcpProxy) -> None:
    couchdb_proxy.refusing = True
    feed = CouchChangeFeed(f"http://127.0.0.1:{couchdb_proxy.port}/db", backoff=FAST, max_retries=2)
    with pytest.raises(CouchUnavailableError, match="failed 3 times"):
        list(feed.iter_changes(forever=True))
    feed.close()


def test_missing_database_is_not_retried(couchdb_url: str) -> None:
    feed = CouchChangeFeed(f"{couchdb_url}/nodb", backoff=FAST)
    with pytest.raises(CouchError, match="HTTP 404"):
        list(feed.iter_changes(forever=True))
    assert feed.reconnects == 0
    feed.close()


def test_database_urls_keep_credentials_out_of_messages() -> None:
    db = CouchDatabase("http://admin:s3cret@127.0.0.1:5984/my%2Fdb")
    assert db.name == "my/db" and db.path == "/my%2Fdb"
    assert "s3cret" not in db.display and "s3cret" not in repr(db)
    assert db.auth is not None
    assert CouchDatabase("http://h:1/prefix", "cases").display == "http://h:1/prefix/cases"
    with pytest.raises(ValueError) as info:
        CouchDatabase("ftp://admin:s3cret@h/db")
    assert "s3cret" not in str(info.value)


def test_seqs_are_passed_back_verbatim() -> None:
    assert seq_param(12) == "12"
    assert seq_param("34-g1AAAAFTeJzLYWBg") == "34-g1AAAAFTeJzLYWBg"
    assert seq_param([3, "abc"]) == '[3,"abc"]'


def test_option_validation() -> None:
    with pytest.raises(ValueError, match="read_timeout"):
        CouchChangeFeed("http://h:1/db", heartbeat=2, read_timeout=1)
    with pytest.raises(ValueError, match="page_size"):
        CouchChangeFeed("http://h:1/db", page_size=0)
