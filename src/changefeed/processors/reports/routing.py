"""Which data sources a document can reach, found through an index of their filters.

With a thousand data sources, running every filter on every document costs a thousand calls
per document. Most filters pin a property to a value (``domain == X``, ``doc_type in [..]``),
so the `Router` indexes each data source under one such clause of its filter spec: a top-level
``equals`` or ``in`` on a ``property_name`` (or a ``{type: property_name}`` expression), or
such a clause inside a top-level ``and``. A document is then looked up once per indexed
property, and only the data sources found (plus those with no indexable clause) run their
full filter. Of several indexable clauses, the one on the property with the most distinct
values across all data sources is used (``domain`` rather than ``doc_type``).

A deleted document has no body: it is routed by its stub, whose ``domain`` and
``document_type`` fields stand for the ``domain`` and ``doc_type`` properties; a data source
indexed on another property is a candidate for every deletion.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from changefeed.change import ChangeMeta

T = TypeVar("T")

STUB_FIELDS = {"domain": "domain", "doc_type": "document_type", "document_type": "document_type"}
"""Document properties whose value a change stub carries (property -> stub field)."""

Clause = tuple[str, tuple[Hashable, ...]]
"""An indexable clause: a property and the values it must equal."""


def indexable_clauses(filter_spec: object) -> list[Clause]:
    """The clauses of a filter spec that every matching document satisfies and that an index
    can look up: top-level ``equals``/``in`` on a plain property, or such clauses of a
    top-level ``and``. Empty when there is none (no filter, ``or``, ``not``...)."""
    if not isinstance(filter_spec, Mapping):
        return []
    if filter_spec.get("type") == "and":
        parts = filter_spec.get("filters")
        clauses = []
        for part in parts if isinstance(parts, list) else []:
            clause = _clause(part)
            if clause is not None:
                clauses.append(clause)
        return clauses
    clause = _clause(filter_spec)
    return [] if clause is None else [clause]


def _clause(spec: object) -> Clause | None:
    if not isinstance(spec, Mapping):
        return None
    prop = _plain_property(spec)
    if prop is None:
        return None
    kind = spec.get("type")
    if kind == "equals" and "value" in spec:
        values: Sequence[Any] = [spec["value"]]
    elif kind == "in" and isinstance(spec.get("values"), list):
        values = spec["values"]
    else:
        return None
    if not all(isinstance(v, Hashable) for v in values):
        return None
    return prop, tuple(values)


def _plain_property(spec: Mapping[str, Any]) -> str | None:
    """The property a filter reads as is: ``property_name: X`` or an ``expression`` that is
    only ``{type: property_name, property_name: X}``."""
    if isinstance(spec.get("property_name"), str) and "expression" not in spec:
        return str(spec["property_name"])
    expr = spec.get("expression")
    if (
        isinstance(expr, Mapping)
        and set(expr) == {"type", "property_name"}
        and expr["type"] == "property_name"
        and isinstance(expr["property_name"], str)
    ):
        return str(expr["property_name"])
    return None


class Router(Generic[T]):
    """The data sources (any values: configs, their processors) a document can reach, from
    ``(filter spec, value)`` pairs. Immutable: a new set of data sources makes a new router."""

    __slots__ = ("_everything", "_index", "_unindexed")

    def __init__(self, entries: Iterable[tuple[object, T]]) -> None:
        pairs = [(indexable_clauses(spec), value) for spec, value in entries]
        # Distinct values, not clauses: every data source of a thousand may say
        # doc_type == "case" (one value, useless to look up) and domain == its own.
        seen: dict[str, set[Hashable]] = {}
        for clauses, _ in pairs:
            for prop, values in clauses:
                seen.setdefault(prop, set()).update(values)
        distinct = Counter({prop: len(values) for prop, values in seen.items()})
        self._index: dict[str, dict[Hashable, list[T]]] = {}
        self._unindexed: list[T] = []
        self._everything: list[T] = []
        for clauses, value in pairs:
            self._everything.append(value)
            if not clauses:
                self._unindexed.append(value)
                continue
            prop, values = max(clauses, key=lambda c: distinct[c[0]])
            by_value = self._index.setdefault(prop, {})
            for v in dict.fromkeys(values):
                by_value.setdefault(v, []).append(value)

    @property
    def properties(self) -> list[str]:
        """The properties documents are looked up by."""
        return list(self._index)

    def candidates(self, document: Mapping[str, Any]) -> list[T]:
        """The data sources whose filter may match ``document`` (each once): those indexed
        under one of its values, and those with no indexable clause."""
        found = list(self._unindexed)
        get = document.get
        for prop, by_value in self._index.items():
            try:
                hit = by_value.get(get(prop))
            except TypeError:  # an unhashable value (object, list) equals no indexed value
                continue
            if hit:
                found.extend(hit)
        return found

    def candidates_of_deletion(self, meta: ChangeMeta | None) -> list[T]:
        """The data sources that may hold rows of a deleted document, from its stub."""
        found = list(self._unindexed)
        for prop, by_value in self._index.items():
            field = STUB_FIELDS.get(prop)
            value = getattr(meta, field) if meta is not None and field is not None else None
            if value is None:
                for hit in by_value.values():
                    found.extend(hit)
                continue
            found.extend(by_value.get(value, ()))
        return _unique(found)

    def __len__(self) -> int:
        return len(self._everything)


def _unique(values: list[T]) -> list[T]:
    seen: set[int] = set()
    out = []
    for value in values:
        if id(value) not in seen:
            seen.add(id(value))
            out.append(value)
    return out
