"""CDC configuration: which tables become which stubs, slot names, connection strings.

Pure values and validation (no server needed), so a config file or a ``--table`` spec is
checked before anything connects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from changefeed.change import ChangeMeta
from changefeed.identifiers import object_name, sql_identifier, topic_name

PLUGIN = "wal2json"
_SLOT_NAME = re.compile(r"^[a-z0-9_]{1,63}$")


class CDCError(RuntimeError):
    """A server, slot or table that cannot be used for CDC, with what to do about it.

    ``sqlstate`` is the PostgreSQL error code behind it, when there was one: the relay
    decides by code, not by message, whether retrying can help.
    """

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def slot_name(name: object) -> str:
    """A replication slot name: lower-case letters, digits and '_', at most 63."""
    if not isinstance(name, str) or not _SLOT_NAME.match(name):
        raise CDCError(
            f"invalid replication slot name {name!r}: use lower-case letters, digits and '_', "
            "at most 63"
        )
    return name


def libpq_dsn(url: str) -> str:
    """A libpq DSN from a libpq DSN or a SQLAlchemy URL (``postgresql+psycopg://...``)."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.startswith("postgresql+"):
        return f"postgresql://{rest}"
    if sep and scheme not in ("postgresql", "postgres"):
        raise CDCError(f"not a PostgreSQL URL: scheme {scheme!r}")
    return url


@dataclass(frozen=True, slots=True)
class CDCTable:
    """Which table to watch and how its rows become stubs.

    The document id comes from ``id_column``, which must be part of the table's replica
    identity (its primary key, by default) so deletes carry it. ``domain_column`` and
    ``version_column`` of deleted rows are only known with ``REPLICA IDENTITY FULL``.
    """

    table: str
    id_column: str = "id"
    document_type: str | None = None
    """Defaults to the table name."""
    schema: str = "public"
    domain_column: str | None = None
    version_column: str | None = None
    data_source_name: str | None = None
    """The document store name the stubs point at; defaults to the table name."""
    data_source_type: str = "sql"
    topic: str | None = None
    """Publish to this topic instead of routing by document type."""

    def __post_init__(self) -> None:
        sql_identifier(self.table, "table name")
        sql_identifier(self.schema, "schema")
        sql_identifier(self.id_column, "id column")
        for col in (self.domain_column, self.version_column):
            if col is not None:
                sql_identifier(col, "column")
        if self.data_source_name is not None:
            object_name(self.data_source_name, "data source name")
        object_name(self.data_source_type, "data source type")
        if self.topic is not None:
            topic_name(self.topic)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    @classmethod
    def parse(cls, spec: str) -> CDCTable:
        """From ``[schema.]table:id_column:doc_type[:domain_column]`` (the CLI's form)."""
        parts = spec.split(":")
        if not 3 <= len(parts) <= 4 or not all(parts[:3]):
            raise CDCError(
                f"invalid table spec {spec!r}: use [schema.]table:id_column:doc_type[:domain_column]"
            )
        schema, _, table = parts[0].rpartition(".")
        return cls(
            table,
            id_column=parts[1],
            document_type=parts[2],
            schema=schema or "public",
            domain_column=parts[3] if len(parts) == 4 and parts[3] else None,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CDCTable:
        if not isinstance(data, Mapping) or "table" not in data:
            raise CDCError(f"a table entry needs at least 'table': {data!r}")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise CDCError(f"unknown table option(s): {', '.join(sorted(map(str, unknown)))}")
        try:
            return cls(**{str(k): v for k, v in data.items()})
        except TypeError as exc:
            raise CDCError(f"invalid table entry {data!r}: {exc}") from None

    def stub(self, row: Mapping[str, Any], deleted: bool) -> ChangeMeta:
        doc_id = row.get(self.id_column)
        if doc_id is None:
            raise CDCError(
                f"change of {self.qualified} without {self.id_column!r}: make it part of the "
                "primary key or replica identity"
            )
        domain = row.get(self.domain_column) if self.domain_column else None
        version = row.get(self.version_column) if self.version_column else None
        return ChangeMeta(
            str(doc_id),
            self.data_source_type,
            self.data_source_name or self.table,
            document_type=self.document_type or self.table,
            domain=None if domain is None else str(domain),
            is_deletion=deleted,
            version=version if isinstance(version, int) and not isinstance(version, bool) else None,
        )


@dataclass(frozen=True, slots=True)
class CDCConfig:
    """A config file's content: the tables, and optionally the slot."""

    tables: tuple[CDCTable, ...]
    slot: str | None = None


def load_config(path: str | Path) -> CDCConfig:
    """Read a YAML or JSON file: ``{slot: name, tables: [{table: ..., id_column: ...}, ...]}``."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise CDCError(f"cannot read CDC config {str(path)!r}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise CDCError(f"CDC config {str(path)!r} is not valid YAML/JSON: {exc}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("tables"), list):
        raise CDCError(f"CDC config {str(path)!r} needs a 'tables' list")
    unknown = set(data) - {"slot", "tables"}
    if unknown:
        raise CDCError(f"unknown CDC config key(s): {', '.join(sorted(map(str, unknown)))}")
    slot = data.get("slot")
    return CDCConfig(
        tuple(CDCTable.from_dict(t) for t in data["tables"]),
        None if slot is None else slot_name(slot),
    )
