"""A PostgreSQL cluster of the tests' own: temp dir, free port, ``wal_level=logical``.

One cluster per test session (`changefeed.testing.postgres.TempPostgresCluster`: initdb +
pg_ctl, as the ``postgres`` user when we run as root), a fresh database per test. Our own
cluster rather than a shared server so logical decoding is available and nothing is left
behind.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from changefeed.testing.postgres import (
    PostgresServer,
    PostgresUnavailableError,
    TempPostgresCluster,
)
from tests.harness._util import unavailable

__all__ = ["PostgresServer", "pg_dsn", "pg_url", "postgres_server"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        cluster = TempPostgresCluster(wal_level="logical")
    except PostgresUnavailableError as exc:
        unavailable(str(exc))
        raise
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    """SQLAlchemy URL (psycopg 3) of a fresh, empty database."""
    return postgres_server.url(postgres_server.create_database())


@pytest.fixture
def pg_dsn(pg_url: str) -> str:
    """libpq DSN of the same fresh database as `pg_url`."""
    return pg_url.replace("postgresql+psycopg://", "postgresql://")
