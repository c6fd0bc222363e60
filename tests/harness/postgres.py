"""A PostgreSQL cluster of the tests' own: temp dir, free port, ``wal_level=logical``.

One cluster per test session (started with initdb + pg_ctl, as the ``postgres`` user when
we run as root), a fresh database per test. Our own cluster rather than a shared server so
logical decoding is available and nothing is left behind.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness._util import free_port, unavailable, wait_for_port

PG_BIN_CANDIDATES = [Path(f"/usr/lib/postgresql/{v}/bin") for v in (17, 16, 15)]


def _pg_bin() -> Path | None:
    for cand in PG_BIN_CANDIDATES:
        if (cand / "initdb").exists():
            return cand
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PostgresServer:
    def __init__(self, port: int, host: str = "127.0.0.1", user: str = "postgres") -> None:
        self.port = port
        self.host = host
        self.user = user

    def dsn(self, dbname: str = "postgres") -> str:
        """libpq connection string (psycopg, psycopg2)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def url(self, dbname: str = "postgres") -> str:
        """SQLAlchemy URL using psycopg 3."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{dbname}"

    def create_database(self, name: str | None = None) -> str:
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = _pg_bin()
    if bindir is None:
        unavailable("PostgreSQL server binaries (initdb) not installed")
    assert bindir is not None
    # Not pytest's tmp_path: its parents are private to root, and the server runs as postgres.
    base = Path(tempfile.mkdtemp(prefix="changefeed-pg-"))
    data = base / "data"
    run_as: dict[str, object] = {}
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        run_as = {"user": pw.pw_uid, "group": pw.pw_gid}
    subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
         "--no-sync"],
        check=True, capture_output=True, **run_as,  # type: ignore[call-overload]
    )
    port = free_port()
    opts = (
        f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={base} "
        "-c wal_level=logical -c max_replication_slots=20 -c max_wal_senders=20 "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    subprocess.run(
        [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-o", opts, "-w", "start"],
        check=True, capture_output=True, **run_as,  # type: ignore[call-overload]
    )
    try:
        wait_for_port(port)
        yield PostgresServer(port)
    finally:
        subprocess.run(
            [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True, **run_as,  # type: ignore[call-overload]
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    """SQLAlchemy URL (psycopg 3) of a fresh, empty database."""
    return postgres_server.url(postgres_server.create_database())


@pytest.fixture
def pg_dsn(pg_url: str) -> str:
    """libpq DSN of the same fresh database as `pg_url`."""
    return pg_url.replace("postgresql+psycopg://", "postgresql://")
