"""Resolving a stub's document store from (data_source_type, data_source_name)."""

from __future__ import annotations

import pytest

from changefeed.change import ChangeMeta
from changefeed.stores import (
    DocumentStore,
    DocumentStoreRegistry,
    MemoryDocumentStore,
    UnknownDocumentStoreError,
)


def test_register_and_resolve_by_type_and_name() -> None:
    registry = DocumentStoreRegistry()
    forms = registry.register(MemoryDocumentStore("forms"))
    cases = registry.register(MemoryDocumentStore("cases"))
    assert registry.get("memory", "forms") is forms
    assert registry.for_change(ChangeMeta("d", "memory", "cases")) is cases
    assert set(registry) == {forms, cases}


def test_unknown_store_has_clear_error() -> None:
    registry = DocumentStoreRegistry()
    registry.register(MemoryDocumentStore("forms"))
    with pytest.raises(UnknownDocumentStoreError, match="data_source_type='sql'.*'forms'"):
        registry.for_change(ChangeMeta("d", "sql", "forms"))
    with pytest.raises(UnknownDocumentStoreError):
        registry.get("memory", "other")


def test_factories_make_stores_on_demand_once() -> None:
    registry = DocumentStoreRegistry()
    made: list[str] = []

    def factory(name: str) -> DocumentStore:
        made.append(name)
        return MemoryDocumentStore(name, data_source_type="couch")

    registry.register_factory("couch", factory)
    first = registry.get("couch", "db1")
    assert registry.get("couch", "db1") is first
    assert registry.get("couch", "db2") is not first
    assert made == ["db1", "db2"]


def test_store_without_identity_rejected() -> None:
    with pytest.raises(ValueError, match="data_source_type and data_source_name"):
        DocumentStoreRegistry().register(MemoryDocumentStore(""))
