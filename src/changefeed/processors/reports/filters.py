"""Filters: which documents (or list items) a data source turns into rows.

Compiled like expressions into closures ``f(item, root) -> bool``. Every filter that reads
a value takes an ``expression`` or, as a shorthand, a ``property_name``. Comparisons between
values that cannot be ordered (``None``, a string against a number) are simply false.

The expression types that hold a filter (``conditional``, ``iterator``) are compiled here
and added to `expressions`' table: this module imports `expressions`, never the reverse.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

from changefeed.processors.reports.expressions import (
    Expr,
    parse_expression,
    property_name,
    register_expression_type,
)
from changefeed.processors.reports.spec import Fields, ReportConfigError, child, index

Filter = Callable[[Any, Any], bool]
"""A compiled filter: ``f(item, root) -> bool``."""


def _value_expr(f: Fields) -> Expr:
    if f.has("expression"):
        if f.has("property_name"):
            raise ReportConfigError(
                f.path_of("property_name"), "give either 'expression' or 'property_name', not both"
            )
        return parse_expression(f.required("expression"), f.path_of("expression"))
    if f.has("property_name"):
        name = f.string("property_name")
        return parse_expression(property_name(name), f.path_of("property_name"))
    raise ReportConfigError(f.path_of("expression"), "required field is missing")


def _equals(f: Fields) -> Filter:
    expr = _value_expr(f)
    if not f.has("value"):
        raise ReportConfigError(f.path_of("value"), "required field is missing")
    value = f.optional("value")
    return lambda item, root: expr(item, root) == value


def _in(f: Fields) -> Filter:
    expr = _value_expr(f)
    values = f.required("values", list)
    try:
        wanted: frozenset[Any] | list[Any] = frozenset(values)
    except TypeError:
        wanted = list(values)

    def is_in(item: Any, root: Any) -> bool:
        try:
            return expr(item, root) in wanted
        except TypeError:  # an unhashable value (object, list) is in no set of scalars
            return False

    return is_in


def _exists(f: Fields) -> Filter:
    expr = _value_expr(f)

    def exists(item: Any, root: Any) -> bool:
        value = expr(item, root)
        return value is not None and value != ""

    return exists


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _operator(f: Fields, known: dict[str, Callable[[Any, Any], bool]]) -> tuple[str, Any]:
    name = f.string("operator")
    try:
        return name, known[name]
    except KeyError:
        raise ReportConfigError(
            f.path_of("operator"), f"unknown operator {name!r} (known: {', '.join(known)})"
        ) from None


def _compare(f: Fields) -> Filter:
    expr = _value_expr(f)
    op_name, op = _operator(f, _OPERATORS)
    if not f.has("value"):
        raise ReportConfigError(f.path_of("value"), "required field is missing")
    value = f.optional("value")

    def compare(item: Any, root: Any) -> bool:
        found = expr(item, root)
        if found is None or value is None:
            return bool(op(found, value)) if op_name in ("==", "!=") else False
        try:
            return bool(op(found, value))
        except TypeError:
            return False

    return compare


def _filters(f: Fields) -> list[Filter]:
    specs = f.required("filters", list)
    if not specs:
        raise ReportConfigError(f.path_of("filters"), "must not be empty")
    return [parse_filter(s, index(f.path_of("filters"), i)) for i, s in enumerate(specs)]


def _and(f: Fields) -> Filter:
    parts = _filters(f)
    return lambda item, root: all(p(item, root) for p in parts)


def _or(f: Fields) -> Filter:
    parts = _filters(f)
    return lambda item, root: any(p(item, root) for p in parts)


def _not(f: Fields) -> Filter:
    inner = parse_filter(f.required("filter"), f.path_of("filter"))
    return lambda item, root: not inner(item, root)


_WITH_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {**_OPERATORS, "in": operator.contains}


def _compare_with(f: Fields) -> Filter:
    """``compare`` against a computed value (a date, another property) instead of a constant:
    ``value_expression`` is evaluated on the same item. ``in`` tests membership in it."""
    expr = _value_expr(f)
    op_name, op = _operator(f, _WITH_OPERATORS)
    reference = parse_expression(f.required("value_expression"), f.path_of("value_expression"))
    if op_name == "in":

        def is_in(item: Any, root: Any) -> bool:
            try:
                return bool(op(reference(item, root), expr(item, root)))
            except TypeError:  # no container, or an unhashable value
                return False

        return is_in

    def compare_with(item: Any, root: Any) -> bool:
        try:
            return bool(op(expr(item, root), reference(item, root)))
        except TypeError:  # values that cannot be ordered (None, a date with a string)
            return False

    return compare_with


# -- CommCare HQ's multi-select and pattern operators ------------------------------------


def _selected(value: Any) -> list[str] | None:
    """The choices of a multi-select answer (space-separated, as HQ stores them); None for
    a value that is not text (it selects nothing)."""
    if value is None:
        return [""]
    return value.split(" ") if isinstance(value, str) else None


def _in_multi(f: Fields) -> Filter:
    expr = _value_expr(f)
    if not f.has("value"):
        raise ReportConfigError(f.path_of("value"), "required field is missing")
    value = f.optional("value")

    def in_multi(item: Any, root: Any) -> bool:
        chosen = _selected(expr(item, root))
        return chosen is not None and value in chosen

    return in_multi


def _any_in_multi(f: Fields) -> Filter:
    expr = _value_expr(f)
    values = f.required("values", list)

    def any_in_multi(item: Any, root: Any) -> bool:
        chosen = _selected(expr(item, root))
        return chosen is not None and any(v in chosen for v in values)

    return any_in_multi


def _regex(f: Fields) -> Filter:
    expr = _value_expr(f)
    source = f.string("pattern")
    try:
        pattern = re.compile(source)
    except re.error as exc:
        raise ReportConfigError(
            f.path_of("pattern"), f"invalid regular expression: {exc}"
        ) from None

    def matches(item: Any, root: Any) -> bool:
        value = expr(item, root)
        return isinstance(value, str) and pattern.search(value) is not None

    return matches


_TYPES: dict[str, Callable[[Fields], Filter]] = {
    "equals": _equals,
    "in": _in,
    "exists": _exists,
    "compare": _compare,
    "and": _and,
    "or": _or,
    "not": _not,
    "in_multi": _in_multi,
    "any_in_multi": _any_in_multi,
    "regex": _regex,
    "compare_with": _compare_with,
}

FILTER_TYPES = tuple(sorted(_TYPES))


def parse_filter(spec: object, path: str) -> Filter:
    fields = Fields(spec, path)
    kind = fields.string("type")
    try:
        parse = _TYPES[kind]
    except KeyError:
        raise ReportConfigError(
            child(path, "type"), f"unknown filter type {kind!r} (known: {', '.join(FILTER_TYPES)})"
        ) from None
    compiled = parse(fields)
    fields.done()
    return compiled


# -- expressions that hold a filter --------------------------------------------------------


def _conditional(f: Fields) -> Expr:
    test = parse_filter(f.required("test"), f.path_of("test"))
    if_true = parse_expression(f.required("expression_if_true"), f.path_of("expression_if_true"))
    if_false: Expr = (
        parse_expression(f.optional("expression_if_false"), f.path_of("expression_if_false"))
        if f.has("expression_if_false")
        else (lambda item, root: None)
    )
    return lambda item, root: if_true(item, root) if test(item, root) else if_false(item, root)


def _iterator(f: Fields) -> Expr:
    specs = f.required("expressions", list)
    parts = [parse_expression(s, index(f.path_of("expressions"), i)) for i, s in enumerate(specs)]
    test = parse_filter(f.optional("test"), f.path_of("test")) if f.has("test") else None

    def iterate(item: Any, root: Any) -> list[Any]:
        values = [expr(item, root) for expr in parts]
        return values if test is None else [v for v in values if test(v, root)]

    return iterate


register_expression_type("conditional", _conditional)
register_expression_type("iterator", _iterator)
