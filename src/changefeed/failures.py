"""The failure types: what went wrong with a change, and whose fault it was.

DESIGN.md's failure model sorts every failure into one of two kinds. A document's failure
(bad data, a processor refusing it) is queued for that document alone; a dependency's failure
(a server down, a timeout) makes the pillow back off and retry the batch. These types carry
that decision from where it is made (fetching, processors) to where it is acted on (the
pillow's batch policy, the error queue).
"""

from __future__ import annotations

from typing import NamedTuple

from changefeed.change import Change

INVALID_STUB = "(invalid stub)"
"""The pseudo processor name under which undecodable stubs are queued."""

FETCH = "(fetch)"
"""The pseudo processor name under which failed document fetches are queued."""


class Failure(NamedTuple):
    """One change that failed, the one type that carries it from where it failed (a
    processor, the fetch, the stub's decoding) to the error queue; ``retryable=False`` parks
    it at once.

    ``where`` names what failed: a processor's name, `FETCH`, `INVALID_STUB`, or a part of a
    processor made of parts (one data source of `ReportTablesProcessor`: a retry then redoes
    that part only, `Processor.for_failure`). A processor may leave it None: the batch runner
    names the failure after the processor (`at`) before queuing it. Processors know this type
    as `changefeed.processors.ChangeFailure`, the same class."""

    change: Change
    exception: BaseException
    retryable: bool = True
    where: str | None = None

    def at(self, where: str) -> Failure:
        """This failure, named ``where`` unless it names a part already."""
        return self if self.where else self._replace(where=where)


class StaleReadError(RuntimeError):
    """The document store returned a version older than the stub announced."""


class DependencyDownError(RuntimeError):
    """Something the pillow depends on is unavailable: back off and retry the batch."""

    def __init__(self, where: str, cause: BaseException) -> None:
        super().__init__(f"{where}: {type(cause).__name__}: {cause}")
        self.where = where
        self.cause = cause


class DependencyError(ConnectionError):
    """Raise (or subclass) this from a processor or store to say "a dependency is down":
    the pillow backs off and retries the batch instead of queuing the change."""


class DocumentError(ValueError):
    """Raise (or subclass) this to say "this document cannot be processed": it is queued
    alone and the pillow moves on, however many changes of the batch fail alike."""


class InvalidDocumentError(DocumentError):
    """The store returned something that is not a JSON object."""


# Exception classes of the clients we use, by "module.Class" name, so this core module need
# not import them. Anything listed is a dependency failure; a subclass counts too.
_DEPENDENCY_CLASSES = frozenset(
    {
        "sqlalchemy.exc.OperationalError",
        "sqlalchemy.exc.InterfaceError",
        "sqlalchemy.exc.DisconnectionError",
        "sqlalchemy.exc.TimeoutError",
        "psycopg.OperationalError",
        "psycopg.errors.OperationalError",
        "psycopg.InterfaceError",
        "psycopg2.OperationalError",
        "psycopg2.InterfaceError",
        "httpx.TransportError",
        "elastic_transport.TransportError",
        "elastic_transport.ConnectionError",
        "elastic_transport.ConnectionTimeout",
        "redis.exceptions.ConnectionError",
        "redis.exceptions.TimeoutError",
        "redis.exceptions.BusyLoadingError",
        "redis.exceptions.ClusterDownError",
        "redis.exceptions.TryAgainError",
        "cimpl.KafkaException",
        "confluent_kafka.KafkaException",
    }
)

# Always the document's, even where a parent class above would say otherwise (e.g. an
# SQLAlchemy error that wraps a data error of the driver).
_DOCUMENT_CLASSES = frozenset(
    {
        "sqlalchemy.exc.DataError",
        "sqlalchemy.exc.IntegrityError",
        "psycopg.DataError",
        "psycopg.IntegrityError",
        "psycopg.errors.DataError",
        "psycopg.errors.IntegrityError",
    }
)

# HTTP answers that mean "try again later" rather than "this request is wrong".
_RETRY_LATER_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def _names(exc: BaseException) -> list[str]:
    return [f"{cls.__module__}.{cls.__qualname__}" for cls in type(exc).__mro__]


def is_dependency_failure(
    exc: BaseException,
    dependency: tuple[type[BaseException], ...] = (),
    document: tuple[type[BaseException], ...] = (),
) -> bool:
    """Whose failure ``exc`` is: True for a dependency's (connection refused or reset, a
    timeout, a server shutting down or overloaded, a transport error of our clients), False
    for the document's. ``dependency`` and ``document`` add a processor's or store's own
    classes, checked first."""
    if document and isinstance(exc, document):
        return False
    if dependency and isinstance(exc, dependency):
        return True
    if isinstance(exc, DocumentError):
        return False
    if isinstance(exc, (DependencyError, DependencyDownError, ConnectionError, TimeoutError)):
        return True
    names = _names(exc)
    if any(name in _DOCUMENT_CLASSES for name in names):
        return False
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error
    if (
        isinstance(orig, BaseException)
        and orig is not exc
        and any(name in _DOCUMENT_CLASSES for name in _names(orig))
    ):
        return False
    if any(name in _DEPENDENCY_CLASSES for name in names):
        return True
    status = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(getattr(exc, "meta", None), "status", None)
    return isinstance(status, int) and status in _RETRY_LATER_STATUS
