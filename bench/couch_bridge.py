"""Couch bridge: throughput (stubs/s) and commit-to-log latency at a steady write rate.

Throughput: bulk-load N documents into pouchdb-server with ``_bulk_docs``, then time the
bridge (``get_change_feed_pillow_for_db``) publishing all of them into a fresh embedded
SQLite log; alternating with rounds that only page ``_changes`` (the raw feed, no classify
or publish), so the ratio shows the bridge's own cost. Medians over the rounds.

Latency: the bridge runs in a child process following the continuous feed; this process
writes documents at a steady rate (default 1,000/s for 10 s, from several writer threads as an
application's request handlers would; one PUT per document, or ``--per-request K`` documents
per ``_bulk_docs``) and records when each write was acknowledged. Latency = the stub's ``publish_timestamp`` (set as the log
append starts) minus that acknowledgement. Reports p50/p99/max.

Starts its own pouchdb-server (tests/servers/couchdb, ``npm install`` there first).

    python bench/couch_bridge.py [--docs 20000] [--rounds 3] [--rate 1000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson

from changefeed.app import App
from changefeed.sources.couch import CouchChangeFeed
from changefeed.sources.couch_bridge import get_change_feed_pillow_for_db

ROOT = Path(__file__).resolve().parents[1]
POUCHDB = ROOT / "tests" / "servers" / "couchdb" / "node_modules" / ".bin" / "pouchdb-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def pouchdb_server() -> Iterator[str]:
    node = shutil.which("node")
    if node is None or not POUCHDB.exists():
        sys.exit("needs node and pouchdb-server: cd tests/servers/couchdb && npm install")
    base = Path(tempfile.mkdtemp(prefix="bench-couch-"))
    port = free_port()
    with open(base / "server.log", "wb") as out:
        proc = subprocess.Popen(
            [node, str(POUCHDB), "--host", "127.0.0.1", "--port", str(port), "--in-memory"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=base,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                sys.exit("pouchdb-server did not start")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(base, ignore_errors=True)


def load(db_url: str, n: int) -> float:
    httpx.put(db_url).raise_for_status()
    types = ("case", "form", "CommCareUser")
    started = time.perf_counter()
    with httpx.Client(timeout=120) as client:
        for start in range(0, n, 1000):
            docs = [
                {
                    "_id": f"doc{i:07d}",
                    "doc_type": types[i % 3],
                    "domain": f"d{i % 7}",
                    "name": f"document {i}",
                    "value": i,
                }
                for i in range(start, min(n, start + 1000))
            ]
            client.post(f"{db_url}/_bulk_docs", json={"docs": docs}).raise_for_status()
    return n / (time.perf_counter() - started)


def bridge_round(db_url: str, n: int) -> float:
    tmp = Path(tempfile.mkdtemp(prefix="bench-bridge-"))
    app = App(f"sqlite:///{tmp}/log.db", f"sqlite:///{tmp}/state.db")
    try:
        bridge = get_change_feed_pillow_for_db(app, db_url)
        bridge.bootstrap()
        app.publisher()
        started = time.perf_counter()
        read = bridge.run(forever=False)
        elapsed = time.perf_counter() - started
        assert read == n and bridge.published == n, (read, bridge.published)
        return elapsed
    finally:
        app.close()
        shutil.rmtree(tmp, ignore_errors=True)


def feed_round(db_url: str, n: int) -> float:
    feed = CouchChangeFeed(db_url)
    started = time.perf_counter()
    read = sum(1 for c in feed.iter_changes() if c is not None)
    elapsed = time.perf_counter() - started
    feed.close()
    assert read == n
    return elapsed


def throughput(url: str, n: int, rounds: int) -> None:
    db_url = f"{url}/throughput"
    rate = load(db_url, n)
    print(f"loaded {n} docs with _bulk_docs at {rate:,.0f} docs/s")
    bridge, feed = [], []
    for _ in range(rounds):
        feed.append(feed_round(db_url, n))
        bridge.append(bridge_round(db_url, n))
    fb, ff = statistics.median(bridge), statistics.median(feed)
    print(f"raw _changes paging : median {ff:.2f}s  {n / ff:,.0f} changes/s  ({rounds} rounds)")
    print(f"bridge to SQLite log: median {fb:.2f}s  {n / fb:,.0f} stubs/s  ({rounds} rounds)")
    print(f"bridge / raw feed throughput ratio: {ff / fb:.2f}")


CHILD = """
import sys, time
from changefeed.app import App
from changefeed.runner import stop_on_signals
from changefeed.sources.couch_bridge import get_change_feed_pillow_for_db
tmp, db_url, max_wait = sys.argv[1], sys.argv[2], float(sys.argv[3])
app = App(f"sqlite:///{tmp}/log.db", f"sqlite:///{tmp}/state.db")
bridge = get_change_feed_pillow_for_db(app, db_url, max_wait=max_wait)
bridge.bootstrap()
with stop_on_signals(bridge.stop, bridge.name):
    print("ready", flush=True)
    bridge.run()
app.close()
"""


def write_steadily(
    db_url: str, rate: int, seconds: float, writers: int, per_request: int
) -> tuple[dict[str, float], float]:
    """Write ``rate * seconds`` documents at a steady rate; returns when each write was
    acknowledged, and the rate achieved."""
    total = int(rate * seconds)
    interval = 1.0 / rate
    acked: dict[str, float] = {}
    requests = range(0, total, per_request)
    started = time.perf_counter()

    def writer(first: int) -> None:
        # Writer k sends requests k, k+W, k+2W, ... each at its due time: a steady rate even
        # when one request takes longer than the interval. A request writes one document
        # (PUT) or ``per_request`` documents (one _bulk_docs, as an app saving a form with
        # its cases does).
        with httpx.Client(timeout=30) as client:
            for start in requests[first::writers]:
                delay = started + start * interval - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                ids = [f"w{i:07d}" for i in range(start, min(total, start + per_request))]
                if per_request == 1:
                    client.put(f"{db_url}/{ids[0]}", json={"doc_type": "case", "i": start})
                else:
                    docs = [{"_id": d, "doc_type": "case", "i": start} for d in ids]
                    client.post(f"{db_url}/_bulk_docs", json={"docs": docs}).raise_for_status()
                now = time.time()
                for doc_id in ids:
                    acked[doc_id] = now

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return acked, total / (time.perf_counter() - started)


def report(label: str, acked: dict[str, float], seen: dict[str, float]) -> None:
    lat = sorted((seen[k] - acked[k]) * 1000 for k in acked if k in seen)
    q = statistics.quantiles(lat, n=100)
    print(
        f"{label}: {len(lat)}/{len(acked)} arrived; p50 {q[49]:.0f} ms, p99 {q[98]:.0f} ms, "
        f"max {lat[-1]:.0f} ms"
    )


def raw_feed_latency(url: str, rate: int, seconds: float, writers: int, per_request: int) -> None:
    """The server's own floor: how long pouchdb-server takes to emit a write on its continuous
    _changes feed to a bare reader (no bridge, no log)."""
    db_url = f"{url}/latency_raw"
    httpx.put(db_url).raise_for_status()
    seen: dict[str, float] = {}
    stop = threading.Event()

    def reader() -> None:
        params = {"feed": "continuous", "heartbeat": "1000", "since": "now"}
        headers = {"Accept-Encoding": "identity"}
        with (
            httpx.Client(timeout=None) as client,
            client.stream("GET", f"{db_url}/_changes", params=params, headers=headers) as response,
        ):
            for line in response.iter_lines():
                if stop.is_set():
                    return
                if line.strip():
                    row = orjson.loads(line)
                    if "id" in row:
                        seen[row["id"]] = time.time()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    time.sleep(1.0)
    acked, achieved = write_steadily(db_url, rate, seconds, writers, per_request)
    deadline = time.monotonic() + 30
    while len(seen) < len(acked) and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    report(
        f"raw _changes feed: {achieved:,.0f} writes/s for {seconds:.0f}s, write-to-feed",
        acked,
        seen,
    )


def latency(
    url: str, rate: int, seconds: float, max_wait: float, writers: int, per_request: int = 1
) -> None:
    db_url = f"{url}/latency_{int(max_wait * 1000)}"
    httpx.put(db_url).raise_for_status()
    tmp = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp), db_url, str(max_wait)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        time.sleep(1.5)  # the bridge is following the continuous feed
        acked, achieved = write_steadily(db_url, rate, seconds, writers, per_request)
        total = len(acked)
        app = App(f"sqlite:///{tmp}/log.db", f"sqlite:///{tmp}/state.db")
        deadline = time.monotonic() + 30
        seen: dict[str, float] = {}
        while len(seen) < total and time.monotonic() < deadline:
            feed = app.change_feed(["case"])
            for change in feed.iter_changes(dict.fromkeys(feed.topic_partitions(), 0)):
                if change is not None and change.metadata is not None:
                    ts = change.metadata.publish_timestamp
                    assert ts is not None
                    seen[change.id] = ts
            feed.close()
            time.sleep(0.2)
        app.close()
    finally:
        child.terminate()
        child.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    report(
        f"bridge max_wait={max_wait:.2f}s: {writers} writers x {per_request} doc(s)/request, "
        f"{achieved:,.0f} writes/s for {seconds:.0f}s, commit-to-log",
        acked,
        seen,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--writers", type=int, default=16, help="concurrent writer threads")
    parser.add_argument("--max-wait", type=float, nargs="+", default=[0.2, 0.05])
    parser.add_argument(
        "--per-request", type=int, default=1, help="documents per write request (>1: _bulk_docs)"
    )
    args = parser.parse_args()
    with pouchdb_server() as url:
        throughput(url, args.docs, args.rounds)
        raw_feed_latency(url, args.rate, args.seconds, args.writers, args.per_request)
        for max_wait in args.max_wait:
            latency(url, args.rate, args.seconds, max_wait, args.writers, args.per_request)


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
