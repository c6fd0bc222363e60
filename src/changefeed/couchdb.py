"""The CouchDB HTTP client: which database on which server, and what its answers mean.

Shared by the document store (`changefeed.stores.couch`) and the ``_changes`` feed and bridge
(`changefeed.sources.couch`, `changefeed.sources.couch_bridge`). It lives below both, so the
store does not reach up into the sources to talk to CouchDB.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import orjson

from changefeed.extras import MissingExtraError

try:
    import httpx
except ImportError as exc:
    raise MissingExtraError("couchdb", exc) from exc

_DB_NAME = re.compile(r"^[a-z][a-z0-9_$()+/-]*$")


class CouchError(RuntimeError):
    """CouchDB answered with an error that retrying will not fix (bad name, no access)."""


class CouchUnavailableError(CouchError):
    """CouchDB could not be reached (or kept failing) after every retry."""


class CouchDatabase:
    """One database on one server: where to send requests, and how to name it in messages.

    ``url`` is the database URL (``http://host:5984/dbname``), or the server URL when ``name``
    is given. Credentials in the URL become basic auth and never appear in ``display``.
    """

    def __init__(self, url: str, name: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"CouchDB URL must be http(s)://host[:port]/db, got {_redact(url)!r}")
        path = parts.path.rstrip("/")
        if name is None:
            head, _, tail = path.rpartition("/")
            if not tail:
                raise ValueError(f"CouchDB URL has no database name: {_redact(url)!r}")
            path, name = head, unquote(tail)
        if not _DB_NAME.match(name):
            raise ValueError(
                f"invalid CouchDB database name {name!r}: lowercase letters, digits and "
                "_$()+-/ , starting with a letter"
            )
        self.name = name
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        self.server_url = urlunsplit((parts.scheme, netloc, path, "", ""))
        self.auth: httpx.BasicAuth | None = (
            httpx.BasicAuth(unquote(parts.username), unquote(parts.password or ""))
            if parts.username
            else None
        )
        self.path = "/" + quote(name, safe="")
        self.display = f"{self.server_url}{self.path}"
        """The URL without credentials, for logs and errors."""

    def client(self, timeout: httpx.Timeout | float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.server_url, auth=self.auth, timeout=timeout)

    def __repr__(self) -> str:
        return f"CouchDatabase({self.display!r})"


def as_database(db: CouchDatabase | str) -> CouchDatabase:
    return db if isinstance(db, CouchDatabase) else CouchDatabase(db)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, f"***@{netloc}", parts.path, parts.query, ""))


def check_response(db: CouchDatabase, response: httpx.Response) -> None:
    """Raise `CouchError` for answers retrying cannot fix; 5xx become `httpx.HTTPStatusError`
    (transient, retried by callers)."""
    if response.status_code < 400:
        return
    if response.status_code >= 500:
        response.raise_for_status()
    try:
        body = orjson.loads(response.read())
        reason = f"{body.get('error')}: {body.get('reason')}"
    except (orjson.JSONDecodeError, AttributeError):
        reason = response.text[:200]
    raise CouchError(f"{db.display}: HTTP {response.status_code} ({reason})")
