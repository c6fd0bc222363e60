"""Whose failure an exception is (`is_dependency_failure`): the decision between queuing one
document and backing off the whole batch. Unit tests: the clients' real exception classes,
made by hand, never raised by a server."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import httpx
import psycopg
import psycopg.errors
import pytest
import sqlalchemy.exc

from changefeed.change import Change, ChangeMeta
from changefeed.failures import (
    DependencyDownError,
    DependencyError,
    DocumentError,
    Failure,
    InvalidDocumentError,
    StaleReadError,
    is_dependency_failure,
)
from changefeed.processors import ChangeFailure


class HttpAnswer(Exception):
    """An HTTP client's error carrying the server's status, as clients spell it: on the
    exception (``status_code``) or on its response metadata (``meta.status``)."""

    def __init__(self, status: int, on_meta: bool = False) -> None:
        super().__init__(f"HTTP {status}")
        if on_meta:
            self.meta = SimpleNamespace(status=status)
        else:
            self.status_code = status


def sqlalchemy_error(cls: type[sqlalchemy.exc.DBAPIError], orig: Exception) -> Exception:
    return cls("UPDATE t SET v = :v", {"v": 1}, orig)


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError("connection refused"),
        ConnectionResetError("reset by peer"),
        TimeoutError("timed out"),
        DependencyError("our own processor says so"),
        DependencyDownError("search", OSError("down")),
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        psycopg.OperationalError("server closed the connection"),
        sqlalchemy_error(sqlalchemy.exc.OperationalError, psycopg.OperationalError("gone")),
    ],
    ids=type,
)
def test_a_dependency_down_is_the_dependencys(exc: Exception) -> None:
    assert is_dependency_failure(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("not a number"),
        KeyError("field"),
        RuntimeError("processor bug"),
        DocumentError("refused"),
        InvalidDocumentError("not a JSON object"),
        StaleReadError("store is behind the stub"),
        psycopg.errors.DataError("value too long"),
        psycopg.errors.UniqueViolation("duplicate key"),
        sqlalchemy_error(sqlalchemy.exc.IntegrityError, Exception("duplicate key")),
        sqlalchemy_error(sqlalchemy.exc.DataError, Exception("value too long")),
    ],
    ids=type,
)
def test_anything_else_is_the_documents(exc: Exception) -> None:
    assert not is_dependency_failure(exc)


def test_a_data_error_of_the_driver_is_the_documents_whatever_wraps_it() -> None:
    # SQLAlchemy may wrap a driver's data error in a class that would otherwise mean "down".
    data = psycopg.errors.NumericValueOutOfRange("integer out of range")
    assert not is_dependency_failure(sqlalchemy_error(sqlalchemy.exc.OperationalError, data))
    assert not is_dependency_failure(sqlalchemy_error(sqlalchemy.exc.DBAPIError, data))


def test_a_document_error_that_is_also_a_connection_error_is_the_documents() -> None:
    class RefusedDocument(DocumentError, ConnectionError):
        pass

    assert not is_dependency_failure(RefusedDocument("this one only"))


def test_subclasses_of_a_listed_client_class_count_too() -> None:
    class PoolExhausted(httpx.TransportError):
        pass

    assert is_dependency_failure(PoolExhausted("no connection left"))


@pytest.mark.parametrize(
    ("status", "down"),
    [(408, True), (425, True), (429, True), (500, True), (502, True), (503, True)]
    + [(504, True), (400, False), (401, False), (404, False), (409, False), (413, False)],
)
@pytest.mark.parametrize("on_meta", [False, True], ids=["status_code", "meta.status"])
def test_http_answers_meaning_try_later_are_the_dependencys(
    status: int, down: bool, on_meta: bool
) -> None:
    assert is_dependency_failure(HttpAnswer(status, on_meta)) is down


def test_a_status_that_is_not_a_number_decides_nothing() -> None:
    exc = HttpAnswer(503)
    exc.status_code = "503"  # type: ignore[assignment]
    assert not is_dependency_failure(exc)


def test_a_processors_own_classes_are_checked_first() -> None:
    class Throttled(Exception):
        pass

    class Rejected(ConnectionError):
        pass

    assert not is_dependency_failure(Throttled())
    assert is_dependency_failure(Throttled(), dependency=(Throttled,))
    assert is_dependency_failure(Rejected())
    assert not is_dependency_failure(Rejected(), document=(Rejected,))
    # When a class is in both, the document's side wins: queuing one change loses nothing.
    both = (Throttled,)
    assert not is_dependency_failure(Throttled(), dependency=both, document=both)


@pytest.mark.parametrize(
    ("module", "make"),
    [
        ("redis.exceptions", lambda m: m.ConnectionError("refused")),
        ("redis.exceptions", lambda m: m.BusyLoadingError("loading")),
        ("elastic_transport", lambda m: m.ConnectionTimeout("slow")),
        ("confluent_kafka", lambda m: m.KafkaException("all brokers down")),
    ],
    ids=["redis-refused", "redis-loading", "elastic-timeout", "kafka"],
)
def test_optional_clients_transport_errors_are_the_dependencys(
    module: str, make: Callable[[Any], BaseException]
) -> None:
    client = pytest.importorskip(module, reason=f"{module} is an optional extra")
    assert is_dependency_failure(make(client))


def test_a_dependency_down_names_where_and_why() -> None:
    cause = ConnectionRefusedError("connection refused")
    down = DependencyDownError("report table cases", cause)
    assert str(down) == "report table cases: ConnectionRefusedError: connection refused"
    assert (down.where, down.cause) == ("report table cases", cause)


def test_one_failure_type_from_processor_to_queue() -> None:
    """What a processor returns is the runner's type: named after the processor unless it
    names a part of it already."""
    assert ChangeFailure is Failure
    change = Change("t", 0, 0, ChangeMeta("d", "memory", "db"))
    exc = ValueError("refused")
    assert ChangeFailure(change, exc).at("proc") == Failure(change, exc, True, "proc")
    part = ChangeFailure(change, exc, False, "report:a")
    assert part.at("proc") is part
