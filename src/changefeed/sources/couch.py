"""A change feed over CouchDB's ``_changes`` API (``CouchChangeFeed``), with httpx.

It first catches up with paged "normal" requests (one JSON body per page, the fastest way to
read a backlog), then follows the ``continuous`` feed. Three things make that robust against
real servers, including pouchdb-server:

* the client keeps its own read timeout: servers may ignore ``timeout=`` and only send
  heartbeat newlines, so a silent connection is declared dead after ``read_timeout``;
* the continuous request asks for ``Accept-Encoding: identity``: a gzip-encoded feed is
  buffered by the server and looks hung;
* a dropped connection, a refused connect or a 5xx is retried with exponential backoff from
  the last seq seen, so nothing is skipped (a change may be re-read, never lost).

Seqs are opaque: integers on pouchdb-server, strings on CouchDB 2/3. They are passed back to
the server exactly as received and never compared or incremented.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from changefeed.extras import MissingExtraError

try:
    import httpx
except ImportError as exc:
    raise MissingExtraError("couchdb", exc) from exc

from changefeed.backoff import Backoff
from changefeed.couchdb import (
    CouchDatabase,
    CouchUnavailableError,
    as_database,
    check_response,
)
from changefeed.lifecycle import StopFlag

__all__ = [
    "COUCH_BACKOFF",
    "CouchChange",
    "CouchChangeFeed",
    "Seq",
    "seq_param",
]

log = logging.getLogger("changefeed.sources.couch")

Seq = Any
"""A CouchDB update sequence: opaque (int on pouchdb-server, str on CouchDB 2/3)."""


def seq_param(seq: Seq) -> str:
    """A seq as the ``since`` query parameter, exactly as the server gave it."""
    if isinstance(seq, str):
        return seq
    if isinstance(seq, int) and not isinstance(seq, bool):
        return str(seq)
    return orjson.dumps(seq).decode()


@dataclass(frozen=True, slots=True)
class CouchChange:
    """One row of ``_changes``: which document, at which seq, deleted or not, and (with
    ``include_docs``) the document itself."""

    seq: Seq
    id: str
    rev: str | None
    deleted: bool
    doc: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> CouchChange:
        changes = row.get("changes") or [{}]
        doc = row.get("doc")
        return cls(
            row["seq"],
            row["id"],
            changes[0].get("rev"),
            bool(row.get("deleted", False)),
            doc if isinstance(doc, dict) else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "id": self.id,
            "rev": self.rev,
            "deleted": self.deleted,
            "doc": self.doc,
        }


COUCH_BACKOFF = Backoff(base=0.5, factor=2.0, cap=30.0)
"""How the feed waits between reconnects (0.5 s, doubling, at most 30 s)."""

_TRANSIENT = (httpx.TransportError, httpx.HTTPStatusError, orjson.JSONDecodeError, KeyError)


class CouchChangeFeed:
    """Reads a database's ``_changes`` from an opaque seq, once or forever.

    ``iter_changes(since, forever=True)`` yields `CouchChange` rows and ``None`` (the idle
    sentinel) at every heartbeat, after catching up and before a reconnect wait, so a
    consumer can flush a partial batch. ``last_seq`` is the seq of the last row yielded.
    """

    def __init__(
        self,
        db: CouchDatabase | str,
        *,
        include_docs: bool = True,
        heartbeat: float = 1.0,
        read_timeout: float | None = None,
        request_timeout: float = 60.0,
        connect_timeout: float = 5.0,
        page_size: int = 1000,
        backoff: Backoff | None = None,
        max_retries: int | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        if heartbeat <= 0:
            raise ValueError("heartbeat must be positive")
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.db = as_database(db)
        self.include_docs = include_docs
        self.heartbeat = heartbeat
        self.read_timeout = read_timeout if read_timeout is not None else max(5.0, 3 * heartbeat)
        if self.read_timeout <= heartbeat:
            raise ValueError("read_timeout must be longer than the heartbeat")
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.page_size = page_size
        backoff = backoff or COUCH_BACKOFF
        if max_retries is not None:
            backoff = dataclasses.replace(backoff, retries=max_retries)
        self.backoff = backoff
        """Waits between reconnects; its ``retries`` (``max_retries``) bounds them."""
        self.max_retries = backoff.retries
        self._client = client or self.db.client()
        self._own_client = client is None
        self._stop = StopFlag()
        self.last_seq: Seq = None
        self.reconnects = 0
        """How many times a failed request was retried (for tests and metrics)."""

    @property
    def topics(self) -> tuple[str, ...]:
        """What this feed reads, named like a topic (``couch:<db>``) for listings."""
        return (f"couch:{self.db.name}",)

    def stop(self) -> None:
        """End iteration at the next heartbeat (or at once when waiting to reconnect)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        """Whether `stop` ended the iteration in hand (cleared when a new one starts)."""
        return self._stop.is_set()

    def close(self) -> None:
        self.stop()
        if self._own_client:
            self._client.close()

    # -- reading -----------------------------------------------------------------------

    def iter_changes(
        self, since: Seq = None, forever: bool = False
    ) -> Iterator[CouchChange | None]:
        """Changes after ``since`` (None: from the beginning). Without ``forever`` the
        iterator ends once caught up with the database."""
        self._stop.clear()
        self.last_seq = since
        failures = 0
        caught_up = False
        while not self._stop.is_set():
            try:
                if not caught_up:
                    yield from self._read_pages()
                    caught_up = True
                    failures = 0
                    if not forever:
                        return
                    yield None
                    if self._stop.is_set():
                        return
                for item in self._read_continuous():
                    failures = 0
                    yield item
            except _TRANSIENT as exc:
                failures += 1
                self.reconnects += 1
                if self.backoff.exhausted(failures):
                    raise CouchUnavailableError(
                        f"{self.db.display}: _changes failed {failures} times: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                delay = self.backoff.delay(failures)
                log.warning(
                    "%s: _changes failed (%s: %s); reconnecting from seq %s in %.1fs",
                    self.db.display,
                    type(exc).__name__,
                    exc,
                    self.last_seq,
                    delay,
                )
                yield None
                self._stop.sleep(delay)

    def _params(self) -> dict[str, str]:
        params: dict[str, str] = {}
        if self.include_docs:
            params["include_docs"] = "true"
        if self.last_seq is not None:
            params["since"] = seq_param(self.last_seq)
        return params

    def _read_pages(self) -> Iterator[CouchChange]:
        """Paged normal requests until a page comes back short."""
        timeout = httpx.Timeout(self.request_timeout, connect=self.connect_timeout)
        while not self._stop.is_set():
            params = self._params()
            params["limit"] = str(self.page_size)
            response = self._client.get(f"{self.db.path}/_changes", params=params, timeout=timeout)
            check_response(self.db, response)
            body = orjson.loads(response.content)
            rows = body["results"]
            for row in rows:
                change = CouchChange.from_row(row)
                self.last_seq = change.seq
                yield change
            if len(rows) < self.page_size:
                return

    def pending(self, since: Seq = None) -> int | None:
        """How many changes follow ``since``: the server's ``pending`` count (CouchDB 2/3),
        else the difference of integer seqs (pouchdb-server); None when it cannot tell."""
        params = {"limit": "1"}
        if since is not None:
            params["since"] = seq_param(since)
        response = self._client.get(f"{self.db.path}/_changes", params=params)
        check_response(self.db, response)
        pending = orjson.loads(response.content).get("pending")
        if isinstance(pending, int):
            return pending
        response = self._client.get(self.db.path)
        check_response(self.db, response)
        head = orjson.loads(response.content).get("update_seq")
        start = 0 if since is None else since
        if isinstance(head, int) and isinstance(start, int):
            return max(0, head - start)
        return None

    def _read_continuous(self) -> Iterator[CouchChange | None]:
        """One continuous request; returns when the server ends it, raises when it drops."""
        params = self._params()
        params["feed"] = "continuous"
        params["heartbeat"] = str(int(self.heartbeat * 1000))
        timeout = httpx.Timeout(
            self.request_timeout, connect=self.connect_timeout, read=self.read_timeout
        )
        with self._client.stream(
            "GET",
            f"{self.db.path}/_changes",
            params=params,
            headers={"Accept-Encoding": "identity"},
            timeout=timeout,
        ) as response:
            check_response(self.db, response)
            for line in response.iter_lines():
                if self._stop.is_set():
                    return
                if not line.strip():
                    yield None
                    continue
                row = orjson.loads(line)
                if "seq" not in row:
                    if "error" in row:
                        raise httpx.RemoteProtocolError(f"error in _changes: {row!r}")
                    return  # {"last_seq": ...}: the server ended the feed; reconnect
                change = CouchChange.from_row(row)
                self.last_seq = change.seq
                yield change
        # A stream that ends without a last_seq line was cut.
        raise httpx.RemoteProtocolError("continuous _changes ended without last_seq")

    def __enter__(self) -> CouchChangeFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
