"""CommCare HQ's data source JSON, read as it is: translated into our own spec format.

HQ users point changefeed at the data sources they already have (``DataSourceConfiguration``
documents: ``domain``, ``referenced_doc_type``, ``table_id``, ``configured_filter``,
``configured_indicators``...). `to_spec` rewrites one into the spec `DataSourceConfig.from_dict`
reads, so everything built on that spec (definition hashing, shadow rebuilds, routing on the
filter) works on it unchanged. HQ's implicit filters come first, as plain clauses of a
top-level ``and``: ``domain`` equals the data source's domain and ``doc_type`` equals its
``referenced_doc_type``. A document of another type, such as ``CommCareCase-Deleted``, or one
that stops matching, therefore loses its rows, as in HQ.

What HQ computes and changefeed cannot (a related document, the evaluator, ledgers,
locations...) is one `ReportConfigError` naming the JSON path and the type: a data source is
never quietly short of a column or a filter clause. Named expressions and filters are
translated once and shared wherever they are used; the caller counts the result as expanded.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from changefeed.identifiers import InvalidIdentifierError, object_name, sql_identifier
from changefeed.processors.reports.spec import Fields, ReportConfigError, child, index, type_name

Spec = dict[str, Any]

TABLE_PREFIX = "config_report_"
"""HQ's table prefix (its original one), so a table is recognisable next to HQ's."""

_HQ_DOC_TYPES = frozenset(
    {
        "DataSourceConfiguration",
        "DataSourceConfiguration-Deleted",
        "RegistryDataSourceConfiguration",
        "RegistryDataSourceConfiguration-Deleted",
    }
)

_IGNORED = (
    # bookkeeping of HQ's database
    "_id",
    "_rev",
    "_attachments",
    "doc_type",
    "meta",
    "last_modified",
    "description",
    # which database and how HQ schedules the work: here, the processor's engine decides
    "engine_id",
    "backend_id",
    "mirrored_engine_ids",
    "asynchronous",
    "is_available_in_analytics",
    "disable_destructive_rebuild",
)
"""Top-level fields that change no row: read and left alone."""

_DATATYPES: dict[str, str] = {
    "string": "string",
    "integer": "integer",
    "small_integer": "integer",
    "decimal": "decimal",
    "date": "date",
    "datetime": "datetime",
    "boolean": "boolean",
    "array": "json",
}
"""HQ's column datatypes and the column type each becomes (an ``array`` is a JSON list)."""

_COMPARISONS = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
_WITH = {"eq": "==", "not_eq": "!=", "in": "in", **_COMPARISONS}
"""HQ's operators a computed value (a date, an expression) can be compared with."""
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?)Z?$")
_OPERATORS = ("eq", "not_eq", "in", "in_multi", "any_in_multi", "regex", *_COMPARISONS)
_SYSTEM_COLUMNS = ("doc_id", "row_num")


def is_hq_data_source(spec: object) -> bool:
    """True for a spec in HQ's format rather than ours."""
    if not isinstance(spec, Mapping):
        return False
    return (
        "configured_indicators" in spec
        or "referenced_doc_type" in spec
        or (isinstance(doc_type := spec.get("doc_type"), str) and doc_type in _HQ_DOC_TYPES)
    )


def table_name(domain: str, table_id: str) -> str:
    """``config_report_<domain>_<table_id>_<hash>``, HQ's name for the table, made a valid
    identifier: other characters become ``_`` and a name past 63 characters is cut and ends
    in a hash of the whole. The 8-character hash is HQ's (of the domain and the table id), so
    two data sources whose names only differ in such characters get different tables."""
    digest = _hash(f"{hashlib.sha1(domain.encode()).hexdigest()}_{table_id}")
    return _identifier(f"{TABLE_PREFIX}{domain}_{table_id}_{digest}")


def data_source_name(domain: str, table_id: str) -> str:
    """``<domain>.<table_id>`` (what ``changefeed reports rebuild`` takes); characters a name
    may not have become ``-`` and the name then ends in a hash, so it stays unique."""
    name = f"{domain}.{table_id}"
    try:
        return object_name(name)
    except InvalidIdentifierError:
        digest = _hash(name)
        cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", name).lstrip("._-")[:110]
        return object_name(f"{cleaned}-{digest}" if cleaned else f"ds-{digest}")


def to_spec(spec: object) -> Spec:
    """Our spec for an HQ data source; every error names the path in HQ's JSON."""
    try:
        return _DataSource(Fields(spec, "")).spec()
    except RecursionError:
        raise ReportConfigError("", "named expressions or filters nested too deeply") from None


# -- names --------------------------------------------------------------------------------


def _hash(text: str) -> str:
    """Eight hex digits of SHA-1 (HQ's choice for its names; a name, not a secret)."""
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _identifier(text: str) -> str:
    """``text`` as a SQL identifier (letters, digits, ``_``; not a digit first; at most 63)."""
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", text)
    if not cleaned or cleaned[0].isdigit():
        cleaned = f"_{cleaned}"
    if len(cleaned) > 63:
        cleaned = f"{cleaned[:54]}_{_hash(text)}"
    return sql_identifier(cleaned)


def _unsupported(path: str, what: str, kind: object, known: Any) -> ReportConfigError:
    return ReportConfigError(
        path,
        f"unsupported CommCare HQ {what} type {kind!r} (changefeed reads: "
        f"{', '.join(sorted(known))})",
    )


# -- the translation ----------------------------------------------------------------------


@dataclass
class _Named:
    """HQ's ``named_expressions`` or ``named_filters``: each translated once, when first used."""

    section: str
    specs: Mapping[str, Any]
    translate: Callable[[object, str], Any]
    done: dict[str, Any] = field(default_factory=dict)
    busy: set[str] = field(default_factory=set)

    def resolve(self, name: str, path: str) -> Any:
        if name in self.done:
            return self.done[name]
        if name not in self.specs:
            known = ", ".join(sorted(map(str, self.specs))) or "none"
            raise ReportConfigError(path, f"no {name!r} in {self.section} (known: {known})")
        if name in self.busy:
            raise ReportConfigError(
                path, f"{self.section} {name!r} refers to itself (directly or through others)"
            )
        self.busy.add(name)
        self.done[name] = self.translate(self.specs[name], child(self.section, name))
        self.busy.discard(name)
        return self.done[name]


class _DataSource:
    """One HQ data source being translated."""

    def __init__(self, f: Fields) -> None:
        self.f = f
        self.expressions = _Named(
            "named_expressions", _unset_is_empty(f, "named_expressions", Mapping), self.expression
        )
        self.filters = _Named(
            "named_filters", _unset_is_empty(f, "named_filters", Mapping), self.filter
        )
        self.column_ids: dict[str, Spec] = {}
        """Our column of each HQ column id (for ``sql_column_indexes``)."""

    def spec(self) -> Spec:
        f = self.f
        doc_type = f.optional("doc_type", str, "DataSourceConfiguration")
        if doc_type.startswith("Registry"):
            raise _unsupported(
                f.path_of("doc_type"), "data source", doc_type, ["DataSourceConfiguration"]
            )
        if doc_type.endswith("-Deleted") or f.optional("is_deactivated", bool, False):
            raise ReportConfigError(
                f.path_of("is_deactivated" if f.spec.get("is_deactivated") else "doc_type"),
                "a deleted or deactivated data source: HQ does not fill its table either",
            )
        domain = f.string("domain")
        table_id = f.string("table_id")
        doc_type_filter = f.string("referenced_doc_type")
        clauses: list[Spec] = [
            {"type": "equals", "property_name": "domain", "value": domain},
            {"type": "equals", "property_name": "doc_type", "value": doc_type_filter},
        ]
        for i, validation in enumerate(_unset_is_empty(f, "validations", list)):
            v = Fields(validation, index(f.path_of("validations"), i))
            v.optional("name", str)
            v.optional("error_message", str)
            v.optional("doc_type")
            clauses.append(self.filter(v.required("expression"), v.path_of("expression")))
            v.done()
        configured = _unset_is_empty(f, "configured_filter", Mapping)
        if configured:
            clauses.append(self.filter(configured, f.path_of("configured_filter")))
        out: Spec = {
            "name": data_source_name(domain, table_id),
            "table": table_name(domain, table_id),
            "description": f.optional("display_name", (str, type(None))) or "",
            "filter": {"type": "and", "filters": clauses},
        }
        base = _unset_is_empty(f, "base_item_expression", Mapping)
        if base:
            out["base_item_expression"] = self.expression(base, f.path_of("base_item_expression"))
        out["columns"] = self.columns()
        self._sql_settings()
        for named in (self.expressions, self.filters):  # HQ refuses a bad one even if unused
            for name in named.specs:
                named.resolve(name, child(named.section, str(name)))
        for key in _IGNORED:
            f.optional(key)
        f.done()
        return out

    # -- columns ----------------------------------------------------------------------

    def columns(self) -> list[Spec]:
        path = self.f.path_of("configured_indicators")
        specs = self.f.required("configured_indicators", list)
        if not specs:
            raise ReportConfigError(path, "a data source needs at least one indicator")
        columns: list[Spec] = []
        seen: dict[str, str] = {name: "" for name in _SYSTEM_COLUMNS}
        for i, spec in enumerate(specs):
            for column_id, column, at in self.indicator(spec, index(path, i)):
                folded = column["name"].lower()
                if folded in seen:
                    where = seen[folded]
                    also = f" (also {where})" if where else " (a column changefeed adds)"
                    raise ReportConfigError(at, f"duplicate column {column['name']!r}{also}")
                seen[folded] = at
                self.column_ids[column_id] = column
                columns.append(column)
        return columns

    def indicator(self, spec: object, path: str) -> list[tuple[str, Spec, str]]:
        """The columns of one indicator: (HQ's column id, our column, its path)."""
        f = Fields(spec, path)
        kind = f.string("type")
        build = _INDICATORS.get(kind)
        if build is None:
            raise _unsupported(f.path_of("type"), "indicator", kind, _INDICATORS)
        f.optional("display_name")
        f.optional("comment")
        column_id = f.string("column_id")
        at = f.path_of("column_id")
        if f.optional("is_primary_key", bool, False):
            raise ReportConfigError(
                f.path_of("is_primary_key"),
                "custom primary keys are not supported (every table is keyed by doc_id, row_num)",
            )
        f.optional("is_nullable", bool)  # a constraint only: every column here takes NULL
        indexed = f.optional("create_index", bool, False)
        transform = f.optional("transform", Mapping, {})
        if transform:
            raise ReportConfigError(
                f.path_of("transform"),
                f"unsupported CommCare HQ transform {transform.get('type')!r}: transforms "
                "change how a report shows a value; store the value and format it when reading",
            )
        made = build(self, f, column_id)
        f.done()
        out = []
        for name, column in made:
            column = {"name": _identifier(name), **column}
            if indexed:
                column["index"] = True
            out.append((name, column, at))
        return out

    def _raw(self, f: Fields, column_id: str) -> list[tuple[str, Spec]]:
        kind, convert = self._datatype(f, required=True)
        return [(column_id, {"type": kind, "expression": convert(self._property(f))})]

    def _expression(self, f: Fields, column_id: str) -> list[tuple[str, Spec]]:
        kind, convert = self._datatype(f, required=True)
        expr = self.expression(f.required("expression"), f.path_of("expression"))
        return [(column_id, {"type": kind, "expression": convert(expr)})]

    def _boolean(self, f: Fields, column_id: str) -> list[tuple[str, Spec]]:
        test = self.filter(f.required("filter"), f.path_of("filter"))
        return [(column_id, {"type": "integer", "expression": _one_if(test)})]

    def _count(self, f: Fields, column_id: str) -> list[tuple[str, Spec]]:
        return [(column_id, {"type": "integer", "expression": {"type": "constant", "constant": 1}})]

    def _choice_list(self, f: Fields, column_id: str) -> list[tuple[str, Spec]]:
        operand = _operand(self._property(f))
        choices = f.required("choices", list)
        if not choices:
            raise ReportConfigError(f.path_of("choices"), "must not be empty")
        style = f.optional("select_style", (str, type(None))) or "single"
        if style not in ("single", "multiple"):
            raise ReportConfigError(
                f.path_of("select_style"), f"expected 'single' or 'multiple', got {style!r}"
            )
        kind = "equals" if style == "single" else "in_multi"
        return [
            (
                f"{column_id}_{choice}",
                {
                    "type": "integer",
                    "expression": _one_if({"type": kind, **operand, "value": choice}),
                },
            )
            for choice in choices
        ]

    def _property(self, f: Fields) -> Spec:
        """The value of a ``property_name`` or ``property_path`` indicator."""
        if f.has("property_name") == f.has("property_path"):
            raise ReportConfigError(
                f.path_of("property_name"), "give either 'property_name' or 'property_path'"
            )
        if f.has("property_name"):
            return {"type": "property_name", "property_name": f.string("property_name")}
        return {"type": "property_path", "property_path": _path(f)}

    def _datatype(self, f: Fields, *, required: bool) -> tuple[str, Callable[[Any], Any]]:
        """The column type of HQ's ``datatype`` and how to turn a value into it."""
        name = f.required("datatype") if required else f.optional("datatype")
        if not isinstance(name, str) or name not in _DATATYPES:
            raise ReportConfigError(
                f.path_of("datatype"),
                f"unknown datatype {type_name(name)} (known: {', '.join(_DATATYPES)})",
            )
        if name == "array":
            return "json", lambda expr: {"type": "to_list", "expression": expr}
        return _DATATYPES[name], lambda expr: expr

    def _sql_settings(self) -> None:
        f = self.f
        settings = Fields(_unset_is_empty(f, "sql_settings", Mapping), f.path_of("sql_settings"))
        if settings.optional("primary_key", list, []):
            raise ReportConfigError(
                settings.path_of("primary_key"),
                "custom primary keys are not supported (every table is keyed by doc_id, row_num)",
            )
        settings.optional("citus_config")  # how Citus distributes the table; not a row
        settings.optional("doc_type")
        settings.done()
        for i, entry in enumerate(_unset_is_empty(f, "sql_column_indexes", list)):
            e = Fields(entry, index(f.path_of("sql_column_indexes"), i))
            ids = e.required("column_ids", list)
            e.optional("doc_type")
            e.optional("include")
            e.done()
            if len(ids) != 1:
                raise ReportConfigError(
                    e.path_of("column_ids"),
                    "indexes over several columns are not supported (index one column each)",
                )
            if ids[0] not in self.column_ids:
                raise ReportConfigError(index(e.path_of("column_ids"), 0), f"no column {ids[0]!r}")
            self.column_ids[ids[0]]["index"] = True

    # -- expressions ------------------------------------------------------------------

    def expression(self, spec: object, path: str) -> Any:
        if not isinstance(spec, Mapping):  # a bare constant
            typed = _typed(spec)
            if typed is not None:
                return typed
            return {"type": "constant", "constant": spec} if isinstance(spec, list) else spec
        return self._build(Fields(spec, path), "expression", _EXPRESSIONS)

    def _build(
        self, f: Fields, what: str, types: Mapping[str, Callable[[_DataSource, Fields], Any]]
    ) -> Any:
        """Our spec of one HQ expression or filter, by its ``type``."""
        kind = f.string("type")
        build = types.get(kind)
        if build is None:
            raise _unsupported(f.path_of("type"), what, kind, types)
        f.optional("comment")
        out = build(self, f)
        f.done()
        return out

    def _sub(self, f: Fields, key: str) -> Any:
        return self.expression(f.required(key), f.path_of(key))

    def _with_datatype(self, f: Fields, out: Spec) -> Spec:
        if f.optional("datatype") is None:
            return out
        kind, convert = self._datatype(f, required=False)
        if kind == "json":
            return convert(out)
        return {**out, "datatype": kind}

    def _e_constant(self, f: Fields) -> Any:
        if not f.has("constant"):
            raise ReportConfigError(f.path_of("constant"), "required field is missing")
        value = f.optional("constant")
        return _typed(value) or {"type": "constant", "constant": value}

    def _e_property_name(self, f: Fields) -> Any:
        name = f.required("property_name")
        if not isinstance(name, str) or not name:
            raise ReportConfigError(
                f.path_of("property_name"),
                f"expected a property name, got {type_name(name)} (computed names are not supported)",
            )
        return self._with_datatype(f, {"type": "property_name", "property_name": name})

    def _e_property_path(self, f: Fields) -> Any:
        return self._with_datatype(f, {"type": "property_path", "property_path": _path(f)})

    def _e_identity(self, f: Fields) -> Any:
        return {"type": "identity"}

    def _e_root_doc(self, f: Fields) -> Any:
        return {"type": "root_doc", "expression": self._sub(f, "expression")}

    def _e_conditional(self, f: Fields) -> Any:
        return {
            "type": "conditional",
            "test": self.filter(f.required("test"), f.path_of("test")),
            "expression_if_true": self._sub(f, "expression_if_true"),
            "expression_if_false": self._sub(f, "expression_if_false"),
        }

    def _e_switch(self, f: Fields) -> Any:
        cases = f.required("cases", Mapping)
        return {
            "type": "switch",
            "switch_on": self._sub(f, "switch_on"),
            "cases": {
                key: self.expression(spec, child(f.path_of("cases"), str(key)))
                for key, spec in cases.items()
            },
            "default": self._sub(f, "default"),
        }

    def _e_coalesce(self, f: Fields) -> Any:
        return {
            "type": "default",
            "expression": self._sub(f, "expression"),
            "default": self._sub(f, "default_expression"),
        }

    def _e_array_index(self, f: Fields) -> Any:
        return {
            "type": "array_index",
            "array_expression": self._sub(f, "array_expression"),
            "index_expression": self._sub(f, "index_expression"),
        }

    def _e_split_string(self, f: Fields) -> Any:
        out = {"type": "split_string", "string_expression": self._sub(f, "string_expression")}
        if f.optional("index_expression") is not None:
            out["index_expression"] = self._sub(f, "index_expression")
        delimiter = f.optional("delimiter", (str, type(None)))
        if delimiter is not None:
            out["delimiter"] = delimiter
        return out

    def _e_iterator(self, f: Fields) -> Any:
        out: Spec = {"type": "iterator", "expressions": self._list(f, "expressions")}
        test = f.optional("test", Mapping, {})
        if test:
            out["test"] = self.filter(test, f.path_of("test"))
        return out

    def _e_nested(self, f: Fields) -> Any:
        return {
            "type": "nested",
            "argument_expression": self._sub(f, "argument_expression"),
            "value_expression": self._sub(f, "value_expression"),
        }

    def _e_dict(self, f: Fields) -> Any:
        properties = f.required("properties", Mapping)
        return {
            "type": "dict",
            "properties": {
                key: self.expression(spec, child(f.path_of("properties"), str(key)))
                for key, spec in properties.items()
            },
        }

    def _e_concatenate_strings(self, f: Fields) -> Any:
        return {
            "type": "join",
            "expression": {"type": "iterator", "expressions": self._list(f, "expressions")},
            "separator": f.required("separator", str),
        }

    def _e_named(self, f: Fields) -> Any:
        return self.expressions.resolve(f.string("name"), f.path_of("name"))

    def _list(self, f: Fields, key: str) -> list[Any]:
        return [
            self.expression(spec, index(f.path_of(key), i))
            for i, spec in enumerate(f.required(key, list))
        ]

    # -- filters ----------------------------------------------------------------------

    def filter(self, spec: object, path: str) -> Any:
        return self._build(Fields(spec, path), "filter", _FILTERS)

    def _f_boolean_expression(self, f: Fields) -> Any:
        operand = _operand(self._sub(f, "expression"))
        op = f.string("operator").lower()
        if op not in _OPERATORS:
            raise ReportConfigError(
                f.path_of("operator"), f"unknown operator {op!r} (known: {', '.join(_OPERATORS)})"
            )
        value, computed = self._reference(f)
        if computed is not None:
            if op not in _WITH:
                raise ReportConfigError(
                    f.path_of("property_value"),
                    f"operator {op!r} needs a constant (not a date or an expression)",
                )
            return {
                "type": "compare_with",
                **operand,
                "operator": _WITH[op],
                "value_expression": computed,
            }
        if op == "eq":
            return {"type": "equals", **operand, "value": value}
        if op == "not_eq":
            return {"type": "not", "filter": {"type": "equals", **operand, "value": value}}
        if op in _COMPARISONS:
            return {"type": "compare", **operand, "operator": _COMPARISONS[op], "value": value}
        if op == "in_multi":
            return {"type": "in_multi", **operand, "value": value}
        if op == "regex":
            if not isinstance(value, str):
                raise ReportConfigError(
                    f.path_of("property_value"), f"expected a pattern, got {type_name(value)}"
                )
            return {"type": "regex", **operand, "pattern": value}
        if not isinstance(value, list):  # in, any_in_multi
            raise ReportConfigError(
                f.path_of("property_value"), f"operator {op!r} needs a list, got {type_name(value)}"
            )
        return {"type": op, **operand, "values": value}

    def _f_property_match(self, f: Fields) -> Any:
        operand = _operand(self._property(f))
        value, computed = self._reference(f)
        if computed is not None:
            return {
                "type": "compare_with",
                **operand,
                "operator": "==",
                "value_expression": computed,
            }
        return {"type": "equals", **operand, "value": value}

    def _f_and_or(self, f: Fields) -> Any:
        specs = f.required("filters", list)
        if not specs:
            raise ReportConfigError(f.path_of("filters"), "must not be empty")
        path = f.path_of("filters")
        return {
            "type": f.spec["type"],
            "filters": [self.filter(s, index(path, i)) for i, s in enumerate(specs)],
        }

    def _f_not(self, f: Fields) -> Any:
        return {"type": "not", "filter": self.filter(f.required("filter"), f.path_of("filter"))}

    def _f_named(self, f: Fields) -> Any:
        return self.filters.resolve(f.string("name"), f.path_of("name"))

    def _reference(self, f: Fields) -> tuple[Any, Any]:
        """``property_value``, what a value is compared with: (the constant, None), or
        (None, the expression to compute it) when HQ reads it as a date or datetime (a
        string that looks like one) or it is an expression."""
        if not f.has("property_value"):
            raise ReportConfigError(f.path_of("property_value"), "required field is missing")
        value = f.optional("property_value")
        if isinstance(value, Mapping) and "type" in value:
            if value.get("type") != "constant" or not set(value) <= {"type", "constant"}:
                return None, self.expression(value, f.path_of("property_value"))
            value = value.get("constant")
        typed = _typed(value)
        return (value, None) if typed is None else (None, typed)


def _unset_is_empty(f: Fields, key: str, kind: type) -> Any:
    """An optional object or list of HQ's, where a missing one and ``null`` mean empty."""
    if f.spec.get(key) is None:
        f.optional(key)
        return [] if kind is list else {}
    return f.optional(key, kind)


def _typed(value: Any) -> Spec | None:
    """The expression for a constant HQ reads as a date or datetime: a string that looks
    like one (HQ's JSON objects convert those, so ``"2015-02-04"`` compares with a date
    column as a date), or a list holding such strings; None for any other constant."""
    if isinstance(value, str):
        if _DATE.match(value):
            return {"type": "to_date", "expression": {"type": "constant", "constant": value}}
        found = _DATETIME.match(value)
        if found:  # naive, in UTC, as HQ's are
            text = found.group(1)
            return {"type": "to_datetime", "expression": {"type": "constant", "constant": text}}
    if isinstance(value, list):
        items = [_typed(v) for v in value]
        if any(items):
            return {
                "type": "iterator",
                "expressions": [
                    typed or {"type": "constant", "constant": v}
                    for typed, v in zip(items, value, strict=True)
                ],
            }
    return None


def _path(f: Fields) -> list[str]:
    steps = f.required("property_path", list)
    if not steps:
        raise ReportConfigError(f.path_of("property_path"), "must not be empty")
    for i, step in enumerate(steps):
        if not isinstance(step, str):
            raise ReportConfigError(
                index(f.path_of("property_path"), i), f"expected a string, got {type_name(step)}"
            )
    return list(steps)


def _operand(expr: Any) -> Spec:
    """What a filter reads: the ``property_name`` shorthand for a plain property (so the
    routing index of a many-data-source processor can use the clause), else the expression."""
    plain = isinstance(expr, Mapping) and set(expr) == {"type", "property_name"}
    if plain and expr["type"] == "property_name":
        return {"property_name": expr["property_name"]}
    return {"expression": expr}


def _one_if(test: Any) -> Spec:
    return {"type": "conditional", "test": test, "expression_if_true": 1, "expression_if_false": 0}


_INDICATORS: dict[str, Callable[[_DataSource, Fields, str], list[tuple[str, Spec]]]] = {
    "raw": _DataSource._raw,
    "expression": _DataSource._expression,
    "boolean": _DataSource._boolean,
    "small_boolean": _DataSource._boolean,
    "count": _DataSource._count,
    "choice_list": _DataSource._choice_list,
}

_EXPRESSIONS: dict[str, Callable[[_DataSource, Fields], Any]] = {
    "constant": _DataSource._e_constant,
    "property_name": _DataSource._e_property_name,
    "property_path": _DataSource._e_property_path,
    "identity": _DataSource._e_identity,
    "root_doc": _DataSource._e_root_doc,
    "conditional": _DataSource._e_conditional,
    "switch": _DataSource._e_switch,
    "coalesce": _DataSource._e_coalesce,
    "array_index": _DataSource._e_array_index,
    "split_string": _DataSource._e_split_string,
    "iterator": _DataSource._e_iterator,
    "nested": _DataSource._e_nested,
    "dict": _DataSource._e_dict,
    "concatenate_strings": _DataSource._e_concatenate_strings,
    "named": _DataSource._e_named,
}

_FILTERS: dict[str, Callable[[_DataSource, Fields], Any]] = {
    "boolean_expression": _DataSource._f_boolean_expression,
    "property_match": _DataSource._f_property_match,
    "and": _DataSource._f_and_or,
    "or": _DataSource._f_and_or,
    "not": _DataSource._f_not,
    "named": _DataSource._f_named,
}
