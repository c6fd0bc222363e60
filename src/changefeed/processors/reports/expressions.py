"""Expressions: how a report column computes its value from a document.

A spec is compiled once into a plain closure ``f(item, root)`` so evaluating a column per
document costs a few Python calls, not a walk over the spec. ``item`` is what property
lookups read (the document, or one element of the list the data source iterates over);
``root`` is always the whole document (reach it with ``root_doc``).

Conversions never raise on bad data: a value that does not convert becomes ``None`` (NULL),
so one odd document cannot stop a report; a wrong *config* is rejected when it is loaded.

Filters read values through expressions, so `filters` imports this module and never the
reverse: the two expression types that hold a filter (``conditional``, ``iterator``) are
compiled there and added to the table here with `register_expression_type` (the package
imports `filters`, so they are known whichever module a caller imports first).
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from changefeed.processors.reports.spec import Fields, ReportConfigError, child, index, type_name

Expr = Callable[[Any, Any], Any]
"""A compiled expression: ``f(item, root) -> value``."""

# -- conversions (also used for column types) -------------------------------------------


def to_int(value: Any) -> int | None:
    if value is None or isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, float | decimal.Decimal):
            return int(value)
        if isinstance(value, str):
            text = value.strip()
            try:
                return int(text)
            except ValueError:
                return int(float(text))
    except (ValueError, OverflowError, decimal.InvalidOperation):
        return None
    return None


def to_float(value: Any) -> float | None:
    if value is None or isinstance(value, float):
        return value
    if isinstance(value, int | decimal.Decimal | str) and not isinstance(value, bool):
        try:
            return float(value)
        except (ValueError, OverflowError):
            return None
    return None


def to_decimal(value: Any) -> decimal.Decimal | None:
    if value is None or isinstance(value, decimal.Decimal):
        return value
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        try:
            return decimal.Decimal(str(value).strip())
        except decimal.InvalidOperation:
            return None
    return None


def to_str(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


_TRUE = frozenset(("true", "yes", "y", "1", "on"))
_FALSE = frozenset(("false", "no", "n", "0", "off", ""))


def to_bool(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return None


def to_datetime(value: Any) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    return None


def to_date(value: Any) -> dt.date | None:
    if value is None or type(value) is dt.date:
        return value
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, str):
        text = value.strip()
        try:
            return dt.date.fromisoformat(text[:10])
        except ValueError:
            found = to_datetime(text)
            return found.date() if found else None
    return None


def to_json(value: Any) -> Any:
    return value


CONVERSIONS: dict[str, Callable[[Any], Any]] = {
    "string": to_str,
    "integer": to_int,
    "float": to_float,
    "decimal": to_decimal,
    "boolean": to_bool,
    "date": to_date,
    "datetime": to_datetime,
    "json": to_json,
}
"""Data types by name: for ``datatype`` on properties and for column types."""


def parse_datatype(fields: Fields, key: str = "datatype") -> Callable[[Any], Any] | None:
    name = fields.optional(key, str)
    if name is None:
        return None
    try:
        return CONVERSIONS[name]
    except KeyError:
        known = ", ".join(sorted(CONVERSIONS))
        raise ReportConfigError(
            fields.path_of(key), f"unknown datatype {name!r} (known: {known})"
        ) from None


# -- expression types --------------------------------------------------------------------


def _cast(expr: Expr, convert: Callable[[Any], Any] | None) -> Expr:
    if convert is None:
        return expr
    return lambda item, root: convert(expr(item, root))


def _property_name(f: Fields) -> Expr:
    name = f.string("property_name")
    convert = parse_datatype(f)

    def get(item: Any, root: Any) -> Any:
        return item.get(name) if isinstance(item, dict) else None

    return _cast(get, convert)


def _property_path(f: Fields) -> Expr:
    steps = f.required("property_path", list)
    if not steps:
        raise ReportConfigError(f.path_of("property_path"), "must not be empty")
    for i, step in enumerate(steps):
        if isinstance(step, bool) or not isinstance(step, str | int):
            raise ReportConfigError(
                index(f.path_of("property_path"), i),
                f"expected a string key or an integer list index, got {type_name(step)}",
            )
    path = tuple(steps)
    convert = parse_datatype(f)

    def get(item: Any, root: Any) -> Any:
        value = item
        for step in path:
            if isinstance(value, dict):
                value = value.get(step) if isinstance(step, str) else None
            elif isinstance(value, list) and isinstance(step, int):
                value = value[step] if -len(value) <= step < len(value) else None
            else:
                return None
            if value is None:
                return None
        return value

    return _cast(get, convert)


def _constant(f: Fields) -> Expr:
    if not f.has("constant"):
        raise ReportConfigError(f.path_of("constant"), "required field is missing")
    value = f.optional("constant")
    return lambda item, root: value


def _root_doc(f: Fields) -> Expr:
    inner = parse_expression(f.required("expression"), f.path_of("expression"))
    return lambda item, root: inner(root, root)


def _conversion(convert: Callable[[Any], Any]) -> Callable[[Fields], Expr]:
    def parse(f: Fields) -> Expr:
        return _cast(parse_expression(f.required("expression"), f.path_of("expression")), convert)

    return parse


def _text(method: Callable[[str], str]) -> Callable[[Fields], Expr]:
    def parse(f: Fields) -> Expr:
        inner = parse_expression(f.required("expression"), f.path_of("expression"))

        def apply(item: Any, root: Any) -> Any:
            value = inner(item, root)
            return method(value) if isinstance(value, str) else value

        return apply

    return parse


def _length(f: Fields) -> Expr:
    inner = parse_expression(f.required("expression"), f.path_of("expression"))

    def length(item: Any, root: Any) -> int | None:
        value = inner(item, root)
        if value is None:
            return 0
        return len(value) if isinstance(value, list | str | dict) else None

    return length


def _join(f: Fields) -> Expr:
    inner = parse_expression(f.required("expression"), f.path_of("expression"))
    separator = f.optional("separator", str, " ")

    def join(item: Any, root: Any) -> str | None:
        value = inner(item, root)
        if not isinstance(value, list):
            return to_str(value)
        return separator.join(s for s in map(to_str, value) if s is not None)

    return join


def _default(f: Fields) -> Expr:
    inner = parse_expression(f.required("expression"), f.path_of("expression"))
    fallback = parse_expression(f.required("default"), f.path_of("default"))

    def default(item: Any, root: Any) -> Any:
        value = inner(item, root)
        return fallback(item, root) if value is None or value == "" else value

    return default


# -- structural expressions (CommCare HQ's: lists, objects, choices) ---------------------


def _identity(f: Fields) -> Expr:
    return lambda item, root: item


def _switch(f: Fields) -> Expr:
    on = parse_expression(f.required("switch_on"), f.path_of("switch_on"))
    specs = f.required("cases", Mapping)
    cases = {
        key: parse_expression(spec, child(f.path_of("cases"), str(key)))
        for key, spec in specs.items()
    }
    otherwise: Expr = (
        parse_expression(f.optional("default"), f.path_of("default"))
        if f.has("default")
        else (lambda item, root: None)
    )

    def switch(item: Any, root: Any) -> Any:
        value = on(item, root)
        try:
            chosen = cases.get(value)
        except TypeError:  # an unhashable value (object, list) is no case
            chosen = None
        return (chosen or otherwise)(item, root)

    return switch


def _array_index(f: Fields) -> Expr:
    array = parse_expression(f.required("array_expression"), f.path_of("array_expression"))
    position = parse_expression(f.required("index_expression"), f.path_of("index_expression"))

    def array_index(item: Any, root: Any) -> Any:
        values = array(item, root)
        i = position(item, root)
        if not isinstance(values, list) or type(i) is not int:
            return None
        return values[i] if -len(values) <= i < len(values) else None

    return array_index


def _nested(f: Fields) -> Expr:
    argument = parse_expression(f.required("argument_expression"), f.path_of("argument_expression"))
    value = parse_expression(f.required("value_expression"), f.path_of("value_expression"))
    return lambda item, root: value(argument(item, root), root)


def _dict(f: Fields) -> Expr:
    specs = f.required("properties", Mapping)
    parts = [
        (key, parse_expression(spec, child(f.path_of("properties"), str(key))))
        for key, spec in specs.items()
    ]
    return lambda item, root: {key: expr(item, root) for key, expr in parts}


def _split_string(f: Fields) -> Expr:
    inner = parse_expression(f.required("string_expression"), f.path_of("string_expression"))
    position = (
        parse_expression(f.optional("index_expression"), f.path_of("index_expression"))
        if f.has("index_expression")
        else None
    )
    delimiter = f.optional("delimiter", str)
    if delimiter == "":
        raise ReportConfigError(f.path_of("delimiter"), "must not be empty")

    def split(item: Any, root: Any) -> Any:
        text = inner(item, root)
        if not isinstance(text, str):
            return None
        parts = text.split(delimiter)
        if position is None:
            return parts
        i = position(item, root)
        if type(i) is not int:
            return None
        return parts[i] if -len(parts) <= i < len(parts) else None

    return split


def _to_list(f: Fields) -> Expr:
    inner = parse_expression(f.required("expression"), f.path_of("expression"))

    def to_list(item: Any, root: Any) -> list[Any]:
        value = inner(item, root)
        return value if isinstance(value, list) else [value]

    return to_list


_TYPES: dict[str, Callable[[Fields], Expr]] = {
    "property_name": _property_name,
    "property_path": _property_path,
    "constant": _constant,
    "root_doc": _root_doc,
    "to_int": _conversion(to_int),
    "to_float": _conversion(to_float),
    "to_decimal": _conversion(to_decimal),
    "to_str": _conversion(to_str),
    "to_bool": _conversion(to_bool),
    "to_date": _conversion(to_date),
    "to_datetime": _conversion(to_datetime),
    "lower": _text(str.lower),
    "upper": _text(str.upper),
    "strip": _text(str.strip),
    "length": _length,
    "join": _join,
    "default": _default,
    "identity": _identity,
    "switch": _switch,
    "array_index": _array_index,
    "nested": _nested,
    "dict": _dict,
    "split_string": _split_string,
    "to_list": _to_list,
}


def register_expression_type(name: str, parse: Callable[[Fields], Expr]) -> None:
    """Add an expression type compiled in a module above this one (`filters`)."""
    if name in _TYPES:
        raise ValueError(f"expression type {name!r} is already registered")
    _TYPES[name] = parse


def parse_expression(spec: object, path: str) -> Expr:
    """Compile an expression spec. A bare string, number, boolean or null is a constant."""
    if spec is None or isinstance(spec, str | int | float | bool):
        value = spec
        return lambda item, root: value
    fields = Fields(spec, path)
    kind = fields.string("type")
    try:
        parse = _TYPES[kind]
    except KeyError:
        raise ReportConfigError(
            child(path, "type"),
            f"unknown expression type {kind!r} (known: {', '.join(sorted(_TYPES))})",
        ) from None
    expr = parse(fields)
    fields.done()
    return expr


def property_name(name: str) -> Mapping[str, Any]:
    """The spec of a plain property lookup (a column's default expression)."""
    return {"type": "property_name", "property_name": name}
