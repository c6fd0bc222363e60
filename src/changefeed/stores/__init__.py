"""Document stores: where pillows fetch the documents behind change stubs."""

from changefeed.stores.base import (
    DocumentDeleted,
    DocumentNotFoundError,
    DocumentStore,
    UnknownDocumentStoreError,
)
from changefeed.stores.memory import MemoryDocumentStore
from changefeed.stores.registry import DocumentStoreRegistry
from changefeed.stores.sql import SQLDocumentStore

__all__ = [
    "DocumentDeleted",
    "DocumentNotFoundError",
    "DocumentStore",
    "DocumentStoreRegistry",
    "MemoryDocumentStore",
    "SQLDocumentStore",
    "UnknownDocumentStoreError",
]
