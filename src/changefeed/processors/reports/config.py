"""A report data source: which documents become rows of which table, column by column.

Defined in JSON or YAML (like CommCare's UCR data sources)::

    name: open-cases
    table: report_open_cases
    filter: {type: equals, property_name: closed, value: false}
    columns:
      - {name: owner, type: string}                 # default expression: property 'owner'
      - name: age
        type: integer
        expression: {type: property_path, property_path: [person, age]}

Every table gets two system columns: ``doc_id`` and ``row_num`` (the primary key). With a
``base_item_expression`` that yields a list, a document becomes one row per list item,
numbered by ``row_num``; column expressions then read the item (``root_doc`` reaches the
document). The config is validated when loaded, and every error names the field path.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from changefeed.identifiers import InvalidIdentifierError, object_name, sql_identifier
from changefeed.processors.reports.expressions import (
    CONVERSIONS,
    Expr,
    parse_expression,
    property_name,
)
from changefeed.processors.reports.filters import Filter, parse_filter
from changefeed.processors.reports.hq import is_hq_data_source, to_spec
from changefeed.processors.reports.spec import Fields, ReportConfigError, index

DOC_ID = "doc_id"
ROW_NUM = "row_num"
SYSTEM_COLUMNS = (DOC_ID, ROW_NUM)

MAX_FILE_BYTES = 1 << 20
"""A data source file is a few kilobytes; anything past 1 MiB is a mistake or an attack."""
MAX_ALIASES = 100
"""YAML aliases (``*name``) allowed in one file: enough to reuse expressions, too few for
an alias bomb (nested aliases that expand to billions of nodes)."""
MAX_DEPTH = 64
"""Nesting of objects and lists in a spec; expressions nest a few levels, not thousands."""
MAX_NODES = 100_000
"""Objects, lists and values in a spec, counted as expanded (aliases count every time)."""

Row = dict[str, Any]

_EXACT: dict[str, type] = {
    "string": str,
    "integer": int,
    "float": float,
    "decimal": decimal.Decimal,
    "boolean": bool,
    "date": dt.date,
    "datetime": dt.datetime,
}
"""Per column type, the Python type its conversion returns unchanged (``type(v) is``, so
``bool`` is not taken for ``int`` nor a datetime for a date)."""


@dataclass(frozen=True, slots=True)
class ColumnConfig:
    name: str
    type: str
    expression: Expr
    index: bool = False
    property: str | None = field(default=None, compare=False)
    """The document property the column reads as is, when its expression is only that
    (the usual case): row building then does one dict lookup instead of calling the
    compiled expression."""

    def value(self, item: Any, root: Any) -> Any:
        return CONVERSIONS[self.type](self.expression(item, root))


@dataclass(frozen=True)
class DataSourceConfig:
    """A validated data source. Build with `from_dict` or `load_data_source`."""

    name: str
    table: str
    columns: tuple[ColumnConfig, ...]
    filter: Filter | None = None
    base_item_expression: Expr | None = None
    description: str = ""
    spec: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    auto_rebuild: bool = True
    """On a changed definition, bootstrap rebuilds the table into a shadow table and swaps
    it in (True), or refuses to start, naming the change (False)."""

    def __post_init__(self) -> None:
        getters = tuple((c.name, c.expression, CONVERSIONS[c.type]) for c in self.columns)
        object.__setattr__(self, "_getters", getters)
        plan = tuple(
            (c.property, c.expression, CONVERSIONS[c.type], _EXACT.get(c.type))
            for c in self.columns
        )
        object.__setattr__(self, "_plan", plan)

    @property
    def multi_row(self) -> bool:
        """True when a document can become more than one row."""
        return self.base_item_expression is not None

    @property
    def column_names(self) -> list[str]:
        return [*SYSTEM_COLUMNS, *(c.name for c in self.columns)]

    def matches(self, document: Mapping[str, Any]) -> bool:
        return self.filter is None or bool(self.filter(document, document))

    def rows(self, doc_id: str, document: dict[str, Any]) -> list[Row]:
        """The rows of one document: none when it does not match the filter."""
        if self.filter is not None and not self.filter(document, document):
            return []
        getters = self._getters  # type: ignore[attr-defined]
        if self.base_item_expression is None:
            row: Row = {DOC_ID: doc_id, ROW_NUM: 0}
            for name, expr, convert in getters:
                row[name] = convert(expr(document, document))
            return [row]
        items = self.base_item_expression(document, document)
        if items is None:
            return []
        if not isinstance(items, list):
            items = [items]
        out: list[Row] = []
        for i, item in enumerate(items):
            row = {DOC_ID: doc_id, ROW_NUM: i}
            for name, expr, convert in getters:
                row[name] = convert(expr(item, document))
            out.append(row)
        return out

    def row_tuples(self, doc_id: str, document: dict[str, Any]) -> list[tuple[Any, ...]]:
        """The same rows as `rows`, as tuples in `column_names` order: what a bulk load
        (PostgreSQL's COPY) writes, without a dict per row. It is the hot loop of a reindex,
        so plain properties are read with one lookup and a value already of the column's
        type skips its conversion (every conversion returns such a value unchanged)."""
        if self.filter is not None and not self.filter(document, document):
            return []
        if self.base_item_expression is None:
            if type(document) is not dict:
                return [tuple(row.values()) for row in self.rows(doc_id, document)]
            get = document.get
            values: list[Any] = [doc_id, 0]
            append = values.append
            for prop, expr, convert, exact in self._plan:  # type: ignore[attr-defined]
                value = get(prop) if prop is not None else expr(document, document)
                if value is not None and type(value) is not exact:
                    value = convert(value)
                append(value)
            return [tuple(values)]
        return [tuple(row.values()) for row in self.rows(doc_id, document)]

    @classmethod
    def from_dict(cls, spec: object) -> DataSourceConfig:
        """Validate ``spec``: our format, or CommCare HQ's data source JSON (translated by
        `hq.to_spec` into ours first). The size is checked before anything is compiled, so
        a spec that expands to billions of nodes is refused at once."""
        _check_size(spec)
        if is_hq_data_source(spec):
            spec = to_spec(spec)
            _check_size(spec)  # named expressions are shared, not copied: count them as used
        f = Fields(spec, "")
        name = _checked(f, "name", lambda v: object_name(v, "data source name"))
        table = _checked(f, "table", lambda v: sql_identifier(v, "table name"))
        description = f.optional("description", str, "")
        auto_rebuild = f.optional("auto_rebuild", bool, True)
        filter_ = parse_filter(f.optional("filter"), "filter") if f.has("filter") else None
        base = (
            parse_expression(f.optional("base_item_expression"), "base_item_expression")
            if f.has("base_item_expression")
            else None
        )
        specs = f.required("columns", list)
        if not specs:
            raise ReportConfigError("columns", "a data source needs at least one column")
        columns: list[ColumnConfig] = []
        # Compared case-insensitively: PostgreSQL folds unquoted names and SQLite compares
        # column names without case, so `Owner` next to `owner` would break the table.
        seen: dict[str, int] = {}
        for i, col_spec in enumerate(specs):
            column = _column(col_spec, index("columns", i))
            folded = column.name.lower()
            if folded in SYSTEM_COLUMNS:
                raise ReportConfigError(
                    f"columns[{i}].name",
                    f"{column.name!r} is a system column ({folded}, case does not matter); "
                    "pick another name",
                )
            if folded in seen:
                other = specs[seen[folded]]["name"]
                case = "" if other == column.name else f" as {other!r}: case does not matter"
                raise ReportConfigError(
                    f"columns[{i}].name",
                    f"duplicate column {column.name!r} (also columns[{seen[folded]}]{case})",
                )
            seen[folded] = i
            columns.append(column)
        f.done()
        return cls(
            name,
            table,
            tuple(columns),
            filter_,
            base,
            description,
            dict(f.spec),
            auto_rebuild=auto_rebuild,
        )


def _checked(f: Fields, key: str, check: Callable[[Any], str]) -> str:
    value = f.required(key)
    try:
        return check(value)
    except InvalidIdentifierError as exc:
        raise ReportConfigError(f.path_of(key), str(exc)) from None


def _column(spec: object, path: str) -> ColumnConfig:
    f = Fields(spec, path)
    name = _checked(f, "name", lambda v: sql_identifier(v, "column name"))
    kind = f.optional("type", str, "string")
    if kind not in CONVERSIONS:
        raise ReportConfigError(
            f.path_of("type"),
            f"unknown column type {kind!r} (known: {', '.join(sorted(CONVERSIONS))})",
        )
    expr_spec = f.optional("expression") if f.has("expression") else property_name(name)
    expression = parse_expression(expr_spec, f.path_of("expression"))
    indexed = f.optional("index", bool, False)
    f.done()
    return ColumnConfig(name, kind, expression, indexed, _plain_property(expr_spec))


def _plain_property(spec: object) -> str | None:
    """The property name of an expression that is a bare ``property_name`` lookup (no
    ``datatype``), else None."""
    if (
        isinstance(spec, Mapping)
        and set(spec) == {"type", "property_name"}
        and spec["type"] == "property_name"
        and isinstance(spec["property_name"], str)
    ):
        return spec["property_name"]
    return None


def _check_size(spec: object) -> None:
    """Refuse specs nested deeper than `MAX_DEPTH` or larger than `MAX_NODES` (counted as
    expanded), walking iteratively so neither recursion nor an alias bomb can hang it."""
    stack: list[tuple[object, int]] = [(spec, 0)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise ReportConfigError(
                "", f"too large: more than {MAX_NODES} values (a YAML alias counts every use)"
            )
        if isinstance(value, Mapping):
            children: Any = value.values()
        elif isinstance(value, list | tuple):
            children = value
        else:
            continue
        if depth >= MAX_DEPTH:
            raise ReportConfigError("", f"nested too deeply (more than {MAX_DEPTH} levels)")
        stack.extend((child, depth + 1) for child in children)


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing more than `MAX_ALIASES` aliases per document."""

    aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise ReportConfigError("", f"more than {MAX_ALIASES} YAML aliases (*name)")
        return super().compose_node(parent, index)


def _parse(text: str, kind: str) -> Any:
    if kind == "JSON":
        return json.loads(text)
    return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass


def load_data_source(path: str | Path) -> DataSourceConfig:
    """Read and validate a data source from a ``.json``, ``.yaml`` or ``.yml`` file.

    Every way a file can be wrong (unreadable, over `MAX_FILE_BYTES`, not UTF-8, not
    parseable, too many aliases, nested too deeply) is a `ReportConfigError`, so the CLI
    reports it on one line instead of crashing or hanging."""
    p = Path(path)
    kind = "JSON" if p.suffix.lower() == ".json" else "YAML"
    try:
        with p.open("rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ReportConfigError("", f"cannot read {p}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ReportConfigError("", f"file larger than {MAX_FILE_BYTES >> 20} MiB", p.name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReportConfigError(
            "", f"not UTF-8 text (byte {exc.start}: {data[exc.start : exc.start + 1]!r})", p.name
        ) from None
    try:
        spec = _parse(text, kind)
    except ReportConfigError as exc:
        raise exc.in_source(p.name) from None
    except RecursionError:
        raise ReportConfigError("", f"not valid {kind}: nested too deeply", p.name) from None
    except (ValueError, yaml.YAMLError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ReportConfigError("", f"not valid {kind}: {detail}", p.name) from None
    try:
        return DataSourceConfig.from_dict(spec)
    except ReportConfigError as exc:
        raise exc.in_source(p.name) from None
