"""The error queue's table: its columns, the bounding of every value written to them, and
the migration of tables made by an older changefeed.

Kept apart from the queue (`errors`) because these rules are about what the databases
accept, not about retries: every value is bounded and escaped here, so a value the database
refuses can never stop a pillow (the queue is written inside a batch, before its checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import traceback as tb

import sqlalchemy as sa

from changefeed.change import Change

NAME_CHARS = 128
"""Longest pillow or processor name stored; longer ones are shortened by `bounded`."""
TOPIC_CHARS = 249
TYPE_CHARS = 255
TEXT_CHARS = 64 * 1024
"""Longest message or traceback stored (characters); a traceback keeps its end."""
ID_CHARS = 1024 * 1024
STUB_BYTES = 1024 * 1024

metadata = sa.MetaData()

errors_table = sa.Table(
    "changefeed_errors",
    metadata,
    # AUTOINCREMENT on SQLite: an id is never handed out twice, even after a purge emptied
    # the table (PostgreSQL sequences never reuse either), so "#N" always means one entry.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("pillow", sa.String(NAME_CHARS), nullable=False),
    sa.Column("processor", sa.String(NAME_CHARS), nullable=False),
    # Kept whole (escaped) in a text column; found through doc_key, which an index can hold
    # whatever the id's length.
    sa.Column("document_id", sa.Text, nullable=False),
    sa.Column("topic", sa.String(TOPIC_CHARS), nullable=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("stub", sa.LargeBinary, nullable=False),
    sa.Column("error_type", sa.String(TYPE_CHARS), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("traceback", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_attempt_at", sa.Float, nullable=False),
    sa.Column("next_attempt_at", sa.Float, nullable=True),
    sa.Column("doc_key", sa.String(64), nullable=True),
    sa.Index("ix_changefeed_errors_due", "pillow", "status", "next_attempt_at"),
    sa.Index("ix_changefeed_errors_key", "pillow", "processor", "doc_key"),
    sqlite_autoincrement=True,
)

RECORD_COLUMNS = [c for c in errors_table.columns if c.name != "doc_key"]


def storable(text: str) -> str:
    """``text`` as every supported database stores it: lone surrogates (invalid UTF-8) and
    NUL (refused by PostgreSQL) written as backslash escapes, e.g. ``\\x00``."""
    if text.isascii() and "\x00" not in text:
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def bounded(text: str, limit: int = NAME_CHARS) -> str:
    """``text`` made storable and at most ``limit`` characters: a longer one keeps its start
    and ends in a hash of the whole, so two long names stay distinct and the same name always
    shortens the same way (processor names derived from long data source names or aliases)."""
    text = storable(text)
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return f"{text[: limit - 17]}~{digest}"


def tail(text: str, limit: int = TEXT_CHARS) -> str:
    """Storable, keeping the end (where a traceback says what failed)."""
    text = storable(text)
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


def head(text: str, limit: int = TEXT_CHARS) -> str:
    """Storable, keeping the start."""
    text = storable(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def doc_key(change: Change) -> str:
    """What makes two failures of one processor "the same entry": the document, or for an
    invalid stub (which may have no id) its place in the log, so a replay does not add it
    twice."""
    if change.metadata is None:
        ident = f"stub\0{change.topic}\0{change.partition}\0{change.offset}"
    else:
        ident = f"doc\0{change.id}"
    return hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()


def error_type_of(exc: BaseException) -> str:
    """The ``error_type`` column: the exception's qualified class name."""
    return error_type_name(type(exc))


def error_type_name(cls: type[BaseException]) -> str:
    """The ``error_type`` column for exceptions of class ``cls``."""
    return bounded(f"{cls.__module__}.{cls.__qualname__}", TYPE_CHARS)


def traceback_of(exc: BaseException) -> str:
    """The ``traceback`` column: the formatted traceback's end."""
    return tail("".join(tb.format_exception(type(exc), exc, exc.__traceback__)))


def message_of(exc: BaseException) -> str:
    """The ``message`` column, even for an exception whose ``str()`` raises."""
    try:
        return head(str(exc))
    except Exception:  # noqa: BLE001 - a broken __str__ must not stop the queue
        return f"<{type(exc).__name__}: message not printable>"


def stub_of(change: Change) -> bytes:
    """The ``stub`` column: what a retry decodes the change from."""
    if change.metadata is not None:
        try:
            return change.metadata.encode()
        except (TypeError, ValueError):
            # e.g. a lone surrogate in an id (a UnicodeEncodeError): JSON can still escape it.
            return json.dumps(change.metadata.to_dict(), default=str).encode()
    return (change.raw or b"")[:STUB_BYTES]


def _old_doc_key(document_id: str) -> str:
    return hashlib.sha256(f"doc\0{document_id}".encode("utf-8", "surrogatepass")).hexdigest()


def migrate(engine: sa.Engine) -> None:
    """Bring a state database made by an older changefeed up to this table: ``document_id``
    as text, the ``doc_key`` column (filled in) and its index, and on SQLite ids that are
    never reused (AUTOINCREMENT needs the table rebuilt)."""
    inspector = sa.inspect(engine)
    columns = {c["name"]: c for c in inspector.get_columns(errors_table.name)}
    name = errors_table.name
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            sql = conn.execute(
                sa.text("SELECT sql FROM sqlite_master WHERE type='table' AND name=:n"),
                {"n": name},
            ).scalar_one()
        if "doc_key" in columns and "AUTOINCREMENT" in sql.upper():
            return
        _rebuild_sqlite(engine)
        return
    if "doc_key" in columns and isinstance(columns["document_id"]["type"], sa.Text):
        return
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text(f"ALTER TABLE {name} ALTER COLUMN document_id TYPE TEXT"))
            conn.execute(sa.text("DROP INDEX IF EXISTS ix_changefeed_errors_doc"))
        if "doc_key" not in columns:
            conn.execute(sa.text(f"ALTER TABLE {name} ADD COLUMN doc_key VARCHAR(64)"))
        _fill_doc_keys(conn)
        key_index = next(i for i in errors_table.indexes if i.name == "ix_changefeed_errors_key")
        key_index.create(conn, checkfirst=True)


def _fill_doc_keys(conn: sa.Connection) -> None:
    t = errors_table
    after = 0
    while True:
        rows = conn.execute(
            sa.select(t.c.id, t.c.document_id)
            .where((t.c.id > after) & t.c.doc_key.is_(None))
            .order_by(t.c.id)
            .limit(1000)
        ).all()
        if not rows:
            return
        for row in rows:
            conn.execute(
                t.update().where(t.c.id == row.id).values(doc_key=_old_doc_key(row.document_id))
            )
        after = rows[-1].id


def _rebuild_sqlite(engine: sa.Engine) -> None:
    old = f"{errors_table.name}_old"
    with engine.begin() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns(errors_table.name)}
        conn.execute(sa.text(f"ALTER TABLE {errors_table.name} RENAME TO {old}"))
        for index in ("ix_changefeed_errors_due", "ix_changefeed_errors_doc"):
            conn.execute(sa.text(f"DROP INDEX IF EXISTS {index}"))
        metadata.create_all(conn)
        names = [c.name for c in errors_table.columns if c.name in columns]
        listed = ", ".join(f'"{n}"' for n in names)
        conn.execute(
            sa.text(f"INSERT INTO {errors_table.name} ({listed}) SELECT {listed} FROM {old}")
        )
        conn.execute(sa.text(f"DROP TABLE {old}"))
        _fill_doc_keys(conn)
