"""SQLAlchemy engines for our own state (checkpoints, error queue) on SQLite or PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from changefeed.extras import MissingExtraError

IDLE_PING_AFTER = 1.0
"""Seconds a pooled server connection may sit unused before its next checkout pings it."""


def make_engine(url: str | sa.Engine) -> sa.Engine:
    """An engine; SQLite files get WAL and a busy timeout so several processes can share them;
    server connections are pinged when they come back from idling (`ping_when_idle`)."""
    if isinstance(url, sa.Engine):
        return url
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        try:
            engine = sa.create_engine(url)
        except ImportError as exc:  # the driver, which SQLAlchemy imports here
            if parsed.get_backend_name() != "postgresql":
                raise
            raise MissingExtraError("postgres", exc) from exc
        ping_when_idle(engine)
        return engine
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    return engine


def not_created_yet(path: str | Path) -> bool:
    """True when a SQLite file does not exist but could be made: its nearest existing
    ancestor is a directory. Commands that only look read such a log or state database as
    empty instead of creating it; a path under a regular file is still an error."""
    target = Path(path)
    if target.exists():
        return False
    for parent in target.absolute().parents:
        if parent.exists():
            return parent.is_dir()
    return False


def ping_when_idle(engine: sa.Engine, idle: float = IDLE_PING_AFTER) -> None:
    """Ping a pooled connection on checkout only if it sat unused for ``idle`` seconds.

    A connection that idled may have been dropped by a server restart or a firewall; a
    failed ping replaces every pooled connection before anything is lost. SQLAlchemy's
    ``pool_pre_ping`` pings on every checkout, which costs a pillow one round trip per store
    read, processor and checkpoint write in every batch; a connection used a moment ago
    needs none. Should it have died anyway, the failing statement is a dependency failure:
    the pool drops its connections and the pillow backs off and retries the batch."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info["changefeed_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("changefeed_idle_since")
        if since is None or time.monotonic() - since < idle:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # noqa: BLE001 - any failure means: use another connection
            raise sa.exc.InvalidatePoolError(f"idle connection is gone: {exc}") from exc


_create_lock = threading.Lock()


def create_tables(
    engine: sa.Engine, metadata: sa.MetaData, tables: Sequence[sa.Table] | None = None
) -> None:
    """Create ``metadata``'s missing tables and their indexes (only ``tables``, when given:
    a user's metadata may hold tables that are not ours to create). The one way every part
    creates its tables: ``create_all`` checks, then creates, which is not atomic, so this
    tolerates another thread or process creating the same tables at the same moment."""
    with _create_lock:
        for attempt in range(3):
            try:
                metadata.create_all(engine, tables, checkfirst=True)
                return
            except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError):
                if attempt == 2:
                    raise
                time.sleep(0.05 * (attempt + 1))


class TablesOf:
    """A store over ``metadata``'s tables in a database the user names, created on first
    use (`create`, race-safe as `create_tables`), once per store: subclasses set
    ``metadata`` and call `create` before they read or write."""

    metadata: sa.MetaData

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._created = False

    def create(self) -> None:
        if not self._created:
            create_tables(self.engine, self.metadata)
            self._created = True


def upsert(
    conn: sa.Connection, table: sa.Table, values: list[dict[str, Any]], keys: list[str]
) -> None:
    """Insert or update rows by their key columns, on SQLite and PostgreSQL."""
    if not values:
        return
    dialect = conn.dialect.name
    if dialect in ("sqlite", "postgresql"):
        from sqlalchemy.dialects import postgresql, sqlite

        stmt: Any = sqlite.insert(table) if dialect == "sqlite" else postgresql.insert(table)
        update = {c: stmt.excluded[c] for c in values[0] if c not in keys}
        conn.execute(stmt.on_conflict_do_update(index_elements=keys, set_=update), values)
        return
    for row in values:  # pragma: no cover - other dialects
        where = sa.and_(*(table.c[k] == row[k] for k in keys))
        if conn.execute(table.update().where(where).values(**row)).rowcount == 0:
            conn.execute(table.insert().values(**row))
