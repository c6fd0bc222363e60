"""External versions: what keeps a replayed or late change from overwriting newer data.

Every write carries a version (from the stub, or from the document); Elasticsearch answers
409 to an older one and the bulk path counts that as done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from changefeed.change import Change
from changefeed.identifiers import InvalidValueError, offset
from changefeed.processors.elastic.errors import ElasticVersionError
from changefeed.stores.base import rev_number

Document = dict[str, Any]
VersionFunc = Callable[[Change], "int | None"]

VERSION_TYPES = ("external", "external_gte")


def external_version(value: object) -> int:
    """An Elasticsearch external version: an integer from 0 to 2^63-1."""
    try:
        return offset(value, "external version")
    except InvalidValueError as exc:
        raise ElasticVersionError(str(exc)) from None


def stub_version(change: Change) -> int | None:
    """The stub's ``version``, else the generation number of its ``document_rev``."""
    meta = change.metadata
    if meta is None:
        return None
    if meta.version is not None:
        return meta.version
    return rev_number(meta.document_rev)


def document_version(func: Callable[[Document], int | None]) -> VersionFunc:
    """Version from the document (``func(doc)``) when there is one, else from the stub
    (deletions have no document)."""

    def version(change: Change) -> int | None:
        doc = None if change.deleted else change.document
        if doc is not None:
            found = func(doc)
            if found is not None:
                return found
        return stub_version(change)

    return version
