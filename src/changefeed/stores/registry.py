"""Resolves the document store for a stub from its (data_source_type, data_source_name)."""

from __future__ import annotations

from collections.abc import Callable

from changefeed.change import ChangeMeta
from changefeed.stores.base import DocumentStore, UnknownDocumentStoreError

StoreFactory = Callable[[str], DocumentStore]


class DocumentStoreRegistry:
    """Stores by exact (type, name), plus per-type factories for stores made on demand
    (e.g. one CouchDB store per database name)."""

    def __init__(self) -> None:
        self._stores: dict[tuple[str, str], DocumentStore] = {}
        self._factories: dict[str, StoreFactory] = {}

    def register(self, store: DocumentStore) -> DocumentStore:
        key = (store.data_source_type, store.data_source_name)
        if not all(key):
            raise ValueError("a document store needs data_source_type and data_source_name")
        self._stores[key] = store
        return store

    def register_factory(self, data_source_type: str, factory: StoreFactory) -> None:
        self._factories[data_source_type] = factory

    def get(self, data_source_type: str, data_source_name: str) -> DocumentStore:
        key = (data_source_type, data_source_name)
        store = self._stores.get(key)
        if store is None:
            factory = self._factories.get(data_source_type)
            if factory is None:
                raise UnknownDocumentStoreError(
                    f"no document store for data_source_type={data_source_type!r} "
                    f"data_source_name={data_source_name!r}"
                )
            store = self._stores[key] = factory(data_source_name)
        return store

    def for_change(self, meta: ChangeMeta) -> DocumentStore:
        return self.get(meta.data_source_type, meta.data_source_name)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._stores.values()))

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
