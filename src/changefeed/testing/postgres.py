"""A throw-away PostgreSQL cluster: ``initdb`` + ``pg_ctl`` in a temp dir, on a free port.

Logical decoding (the outbox's sibling, CDC) needs ``wal_level=logical``, which a shared server
may not have, so tests and benchmarks start a cluster of their own. Durability settings are
off (``fsync``, ``full_page_writes``): the cluster lives only as long as the run.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from changefeed.testing.servers import free_port, wait_for_port

PG_BIN_CANDIDATES = tuple(Path(f"/usr/lib/postgresql/{v}/bin") for v in (17, 16, 15))


class PostgresUnavailableError(RuntimeError):
    """The PostgreSQL server binaries are not installed."""


def pg_bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` live (Debian's versioned dirs, then ``$PATH``)."""
    for cand in PG_BIN_CANDIDATES:
        if (cand / "initdb").exists():
            return cand
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PostgresServer:
    """Addresses of a running server: libpq DSNs and SQLAlchemy (psycopg 3) URLs."""

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
        """A new empty database (random name unless given); returns its name."""
        import psycopg
        from psycopg import sql

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name


class TempPostgresCluster(PostgresServer):
    """A cluster of our own; `start` it, `stop` it (the data dir is removed on stop).

    When we run as root the server runs as the ``postgres`` user, as PostgreSQL requires.
    """

    def __init__(
        self,
        *,
        wal_level: str = "logical",
        max_connections: int = 200,
        output_plugins: tuple[str, ...] = ("wal2json",),
        settings: dict[str, str] | None = None,
    ) -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise PostgresUnavailableError("PostgreSQL server binaries (initdb) not installed")
        super().__init__(free_port())
        self.bindir = bindir
        self.wal_level = wal_level
        self.max_connections = max_connections
        self.output_plugins = output_plugins
        self.settings = dict(settings or {})
        """Extra server settings (``-c name=value``), e.g. ``{"synchronous_commit": "on"}``."""
        self.base: Path | None = None

    def _run(self, *args: str, check: bool = True) -> None:
        run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            run_as = {"user": pw.pw_uid, "group": pw.pw_gid}
        subprocess.run(args, check=check, capture_output=True, **run_as)

    def start(self, timeout: float = 30.0) -> TempPostgresCluster:
        # Not under a private temp dir of root's: the server runs as postgres.
        self.base = base = Path(tempfile.mkdtemp(prefix="changefeed-pg-"))
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(base, pw.pw_uid, pw.pw_gid)
        data = base / "data"
        self._run(
            str(self.bindir / "initdb"), "-D", str(data), "-U", self.user, "--auth=trust",
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        opts = (
            f"-c port={self.port} -c listen_addresses={self.host} "
            f"-c unix_socket_directories={base} -c wal_level={self.wal_level} "
            "-c max_replication_slots=20 -c max_wal_senders=20 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off "
            f"-c max_connections={self.max_connections}"
        ) + "".join(f" -c {name}={value}" for name, value in self.settings.items())
        try:
            self._run(
                str(self.bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"),
                "-o", opts, "-w", "start",
            )  # fmt: skip
            wait_for_port(self.port, timeout)
            self._allow_output_plugins()
        except BaseException:
            self.stop()
            raise
        return self

    def _allow_output_plugins(self) -> None:
        """Allow our output plugins on servers that restrict them.

        Some builds (recent Debian security releases) only let plugins listed in
        ``output_plugin_libraries`` decode; stock PostgreSQL has no such setting.
        """
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            row = conn.execute(
                "SELECT setting FROM pg_settings WHERE name = 'output_plugin_libraries'"
            ).fetchone()
            if row is None:
                return
            allowed = [p.strip() for p in str(row[0]).split(",") if p.strip()]
            wanted = allowed + [p for p in self.output_plugins if p not in allowed]
            if wanted == allowed:
                return
            conn.execute(
                sql.SQL("ALTER SYSTEM SET output_plugin_libraries = {}").format(
                    sql.SQL(", ").join(sql.Literal(p) for p in wanted)
                )
            )
            conn.execute("SELECT pg_reload_conf()")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # the reload is asynchronous
                with psycopg.connect(self.dsn(), autocommit=True) as check:
                    now = check.execute("SHOW output_plugin_libraries").fetchone()
                if now is not None and all(p in str(now[0]) for p in wanted):
                    return
                time.sleep(0.02)

    def stop(self) -> None:
        if self.base is None:
            return
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.base / "data"), "-m", "immediate",
            "-w", "stop", check=False,
        )  # fmt: skip
        shutil.rmtree(self.base, ignore_errors=True)
        self.base = None

    def __enter__(self) -> TempPostgresCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
