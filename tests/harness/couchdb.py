"""A CouchDB-API server for tests: pouchdb-server from npm, on a free port, data in a temp dir.

One server per session (it takes about 2 s to start), a fresh database per test. A small
TCP proxy lets tests cut connections to the real server to exercise reconnects.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness._util import free_port, start, stop_process, unavailable, wait_for_port

SERVER_DIR = Path(__file__).resolve().parents[1] / "servers" / "couchdb"
BIN = SERVER_DIR / "node_modules" / ".bin" / "pouchdb-server"


class CouchServer:
    def __init__(self, url: str) -> None:
        self.url = url

    def create_database(self, name: str | None = None) -> str:
        """Create a database; returns its URL."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        response = httpx.put(f"{self.url}/{name}")
        response.raise_for_status()
        return f"{self.url}/{name}"


def _wait_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"pouchdb-server not ready at {url}")
        time.sleep(0.1)


@pytest.fixture(scope="session")
def couchdb_server() -> Iterator[CouchServer]:
    node = shutil.which("node")
    if node is None:
        unavailable("node is not installed (apt-get install nodejs npm)")
    if not BIN.exists():
        unavailable(f"pouchdb-server missing: run `npm install` in {SERVER_DIR.name}/")
    assert node is not None
    base = Path(tempfile.mkdtemp(prefix="changefeed-couch-"))
    port = free_port()
    (base / "data").mkdir()
    # cwd=base: pouchdb-server writes its config.json and log.txt to the working directory.
    proc = start(
        [node, str(BIN), "--host", "127.0.0.1", "--port", str(port), "--dir", str(base / "data")],
        str(base / "server.log"),
        cwd=str(base),
    )
    try:
        wait_for_port(port, proc=proc)
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url)
        yield CouchServer(url)
    finally:
        stop_process(proc)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def couchdb_url(couchdb_server: CouchServer) -> str:
    """Server URL (``http://127.0.0.1:PORT``) of the session's pouchdb-server."""
    return couchdb_server.url


@pytest.fixture
def couch_db(couchdb_server: CouchServer) -> str:
    """URL of a fresh, empty database."""
    return couchdb_server.create_database()


class TcpProxy:
    """Forwards 127.0.0.1:port to a real server; `drop` cuts every open connection and
    `refuse` makes new ones fail, to test reconnects against the real server."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.refusing = False
        self.connections = 0
        self._sockets: list[socket.socket] = []
        self._stalled: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self.connections += 1
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if src in self._stalled:
                    continue  # swallow: the client sees a silent connection
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def stall(self) -> None:
        """Open connections go silent (no heartbeats); new ones work normally."""
        with self._lock:
            self._stalled.update(self._sockets)

    def drop(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._closed = True
        self.drop()
        self._listener.close()


@pytest.fixture
def couchdb_proxy(couchdb_server: CouchServer) -> Iterator[TcpProxy]:
    """A proxy in front of the session's server; its ``port`` replaces the server's."""
    port = int(couchdb_server.url.rsplit(":", 1)[1])
    proxy = TcpProxy(port)
    try:
        yield proxy
    finally:
        proxy.close()
