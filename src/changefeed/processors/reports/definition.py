"""What a report table was built from: a definition hash, stored next to the table.

A report table's rows depend on its columns (names, types, expressions), its filter and its
base item expression. When any of these changes, the rows already in the table are wrong
until a rebuild, and some changes (a column retyped or removed) make the table unwritable
with the new config. So each table's normalised definition and its hash are kept in a small
table of the report database, ``changefeed_report_definitions`` (one row per table), written
when the table is created and when a rebuild swaps a new table in. Bootstrap compares the
stored hash with the config's, and `DefinitionChange` says in words what changed.

The stored row also keeps the whole config the table was built with: while a new table is
rebuilt next to it, the pillow keeps writing the old table with the old config.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from changefeed.processors.reports.config import DataSourceConfig
from changefeed.processors.reports.expressions import property_name

DEFINITIONS_TABLE = "changefeed_report_definitions"


def definitions_table(schema: str | None = None) -> sa.Table:
    return sa.Table(
        DEFINITIONS_TABLE,
        sa.MetaData(schema=schema),
        sa.Column("table_name", sa.String(255), primary_key=True),
        sa.Column("data_source", sa.String(255), nullable=False),
        sa.Column("definition_hash", sa.String(64), nullable=False),
        sa.Column("definition", sa.Text, nullable=False),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def normalised(config: DataSourceConfig) -> dict[str, Any]:
    """The parts of a config that decide the table's rows and shape, with defaults filled in
    (a column without ``type`` is a string; without ``expression``, a property lookup), so
    that writing a default out does not count as a change. Name, description and
    ``auto_rebuild`` are left out: they change no row."""
    spec = config.spec
    columns = []
    for column, column_spec in zip(config.columns, spec.get("columns", []), strict=False):
        expression = (
            column_spec.get("expression", property_name(column.name))
            if isinstance(column_spec, Mapping)
            else property_name(column.name)
        )
        columns.append(
            {
                "name": column.name,
                "type": column.type,
                "expression": expression,
                "index": column.index,
            }
        )
    return {
        "table": config.table,
        "filter": spec.get("filter"),
        "base_item_expression": spec.get("base_item_expression"),
        "columns": columns,
    }


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def definition_hash(config: DataSourceConfig) -> str:
    """SHA-256 of the normalised definition (hex)."""
    return hashlib.sha256(_dumps(normalised(config)).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredDefinition:
    table: str
    data_source: str
    hash: str
    definition: dict[str, Any]
    config: dict[str, Any]

    def load_config(self) -> DataSourceConfig | None:
        """The config the table was built with, or None when this version cannot read it."""
        try:
            return DataSourceConfig.from_dict(self.config)
        except Exception:  # noqa: BLE001 - an old config this version no longer accepts
            return None


def read_definition(
    conn: sa.Connection, table: str, schema: str | None = None
) -> StoredDefinition | None:
    t = definitions_table(schema)
    if not sa.inspect(conn).has_table(t.name, schema=schema):
        return None
    row = conn.execute(sa.select(t).where(t.c.table_name == table)).first()
    if row is None:
        return None
    return StoredDefinition(
        row.table_name,
        row.data_source,
        row.definition_hash,
        json.loads(row.definition),
        json.loads(row.config),
    )


def definition_row(config: DataSourceConfig, table: str | None = None) -> dict[str, Any]:
    return {
        "table_name": table or config.table,
        "data_source": config.name,
        "definition_hash": definition_hash(config),
        "definition": _dumps(normalised(config)),
        "config": _dumps(dict(config.spec)),
        "updated_at": time.time(),
    }


def write_definition(conn: sa.Connection, config: DataSourceConfig, schema: str | None) -> None:
    """Record (insert or replace) the definition a table was built with."""
    t = definitions_table(schema)
    t.metadata.create_all(conn, checkfirst=True)
    row = definition_row(config)
    conn.execute(t.delete().where(t.c.table_name == row["table_name"]))
    conn.execute(t.insert().values(**row))


@dataclass(slots=True)
class DefinitionChange:
    """What differs between the definition a table was built with and the config."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    retyped: list[str] = field(default_factory=list)
    expressions: list[str] = field(default_factory=list)
    indexes: list[str] = field(default_factory=list)
    filter: bool = False
    base_item: bool = False
    unknown: bool = False
    """The table predates stored definitions: filter and expressions cannot be compared."""

    @property
    def needs_rebuild(self) -> bool:
        """True when the rows in the table are no longer what the config makes (an index
        alone is added or dropped in place)."""
        return bool(
            self.added
            or self.removed
            or self.retyped
            or self.expressions
            or self.filter
            or self.base_item
        )

    def __str__(self) -> str:
        parts = []
        if self.added:
            parts.append(f"columns added: {', '.join(self.added)}")
        if self.removed:
            parts.append(f"columns removed: {', '.join(self.removed)}")
        if self.retyped:
            parts.append(f"columns retyped: {', '.join(self.retyped)}")
        if self.expressions:
            parts.append(f"expressions changed: {', '.join(self.expressions)}")
        if self.filter:
            parts.append("filter changed")
        if self.base_item:
            parts.append("base_item_expression changed")
        if self.indexes:
            parts.append(f"indexes changed: {', '.join(self.indexes)}")
        return "; ".join(parts) or "no change"


def compare(old: Mapping[str, Any], new: Mapping[str, Any]) -> DefinitionChange:
    """The change from normalised definition ``old`` to ``new``."""
    change = DefinitionChange()
    old_cols = {c["name"].lower(): c for c in old.get("columns", [])}
    new_cols = {c["name"].lower(): c for c in new.get("columns", [])}
    for key, col in new_cols.items():
        before = old_cols.get(key)
        if before is None:
            change.added.append(f"{col['name']} ({col['type']})")
            continue
        if before["type"] != col["type"]:
            change.retyped.append(f"{col['name']} ({before['type']} -> {col['type']})")
        if _dumps(before["expression"]) != _dumps(col["expression"]):
            change.expressions.append(col["name"])
        if bool(before.get("index")) != bool(col.get("index")):
            change.indexes.append(
                f"{col['name']} ({'indexed' if col.get('index') else 'not indexed'})"
            )
    change.removed = [col["name"] for key, col in old_cols.items() if key not in new_cols]
    change.filter = _dumps(old.get("filter")) != _dumps(new.get("filter"))
    change.base_item = _dumps(old.get("base_item_expression")) != _dumps(
        new.get("base_item_expression")
    )
    return change


def compare_reflected(
    reflected: Mapping[str, str | None], config: DataSourceConfig, system: tuple[str, ...]
) -> DefinitionChange:
    """The change between a table without a stored definition (its columns and their kinds,
    as reflected) and the config: only columns can be compared."""
    change = DefinitionChange(unknown=True)
    have = {name.lower(): (name, kind) for name, kind in reflected.items()}
    for column in config.columns:
        found = have.get(column.name.lower())
        if found is None:
            change.added.append(f"{column.name} ({column.type})")
        elif found[1] is not None and found[1] != column.type:
            change.retyped.append(f"{column.name} ({found[1]} -> {column.type})")
    wanted = {c.name.lower() for c in config.columns} | set(system)
    change.removed = [name for key, (name, _) in have.items() if key not in wanted]
    return change
