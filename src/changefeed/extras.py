"""The optional parts of changefeed, each installed as an extra of the package.

The core install runs the embedded log, SQL document stores and report tables on SQLite
(``pip install changefeed``); Kafka, PostgreSQL, Elasticsearch, Redis, CouchDB and the web
server (dashboard and metrics) need client libraries that most users of one never need the
others of. Reaching a part whose extra is missing raises `MissingExtraError`, whose one-line
message names the ``pip install`` to run (the CLI prints it and exits 2), instead of a bare
``ModuleNotFoundError`` from deep inside the import.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

FEATURES = {
    "kafka": "the Kafka log",
    "postgres": "PostgreSQL",
    "elastic": "the Elasticsearch processor",
    "redis": "the Redis cache processor",
    "couchdb": "CouchDB",
    "web": "serving the dashboard or metrics",
}
"""What each extra enables, for the message."""


class MissingExtraError(ImportError):
    """A part of changefeed was used without the extra that installs its client library."""

    def __init__(self, extra: str, cause: ImportError) -> None:
        super().__init__(
            f"{FEATURES[extra]} needs the {extra!r} extra ({cause}): "
            f"pip install 'changefeed[{extra}]'",
            name=cause.name,
        )
        self.extra = extra


def require(module: str, *, extra: str) -> ModuleType:
    """``module``, imported; `MissingExtraError` naming ``extra`` when it cannot be."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(extra, exc) from exc


def installed(module: str) -> bool:
    """Whether ``module`` can be found, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # blocked (None in sys.modules), or a broken parent
        return False
