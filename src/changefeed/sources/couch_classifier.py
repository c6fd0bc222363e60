"""How a CouchDB document becomes a change stub: the bridge's classifier.

Kept apart from the bridge's loop because it is the part users replace: any
``classify(change, data_source_name) -> ChangeMeta`` will do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from changefeed.change import ChangeMeta
from changefeed.sources.couch import CouchChange

CLASSIFY = "classify"
"""The pseudo processor name under which unclassifiable documents are queued."""


class UnclassifiableDocumentError(ValueError):
    """A document the classifier cannot turn into a stub (no type, wrong field types)."""


Classifier = Callable[[CouchChange, str], ChangeMeta]
"""``classify(change, data_source_name) -> ChangeMeta``; raises `UnclassifiableDocumentError`."""


@dataclass(frozen=True, slots=True)
class CouchDocumentClassifier:
    """The default classifier: doc type from the first of ``type_fields`` present, subtype
    and domain from their fields, deletion from ``_changes`` (or a soft-delete doc type
    ending in ``deleted_suffix``, as pillowtop's ``CommCareCase-Deleted``).

    A hard-deleted document's tombstone usually has no fields: its deletion is still
    published, with the type the tombstone carries or none (routed to the default topic).
    """

    type_fields: Sequence[str] = ("doc_type", "type")
    subtype_fields: Sequence[str] = ("subtype", "type_subtype")
    domain_field: str | None = "domain"
    deleted_suffix: str | None = "-Deleted"
    data_source_type: str = "couch"

    def __call__(self, change: CouchChange, data_source_name: str) -> ChangeMeta:
        doc = change.doc
        if doc is None and not change.deleted:
            raise UnclassifiableDocumentError("no document in the change (include_docs off?)")
        doc = doc or {}
        doc_type = self._first(doc, self.type_fields, "type")
        is_deletion = change.deleted
        if doc_type is None and not is_deletion:
            fields = " or ".join(repr(f) for f in self.type_fields)
            raise UnclassifiableDocumentError(f"document has no {fields} field")
        suffix = self.deleted_suffix
        if doc_type is not None and suffix and doc_type.endswith(suffix):
            doc_type = doc_type[: -len(suffix)] or None
            is_deletion = True
        domain = None
        if self.domain_field is not None:
            domain = doc.get(self.domain_field)
            if domain is not None and not isinstance(domain, str):
                raise UnclassifiableDocumentError(
                    f"{self.domain_field!r} must be a string, got {type(domain).__name__}"
                )
        return ChangeMeta(
            change.id,
            self.data_source_type,
            data_source_name,
            document_type=doc_type,
            document_subtype=self._first(doc, self.subtype_fields, "subtype"),
            domain=domain or None,
            is_deletion=is_deletion,
            document_rev=change.rev,
        )

    @staticmethod
    def _first(doc: dict[str, Any], fields: Sequence[str], what: str) -> str | None:
        for name in fields:
            value = doc.get(name)
            if value is None:
                continue
            if not isinstance(value, str) or not value:
                raise UnclassifiableDocumentError(
                    f"{what} field {name!r} must be a non-empty string, got {value!r}"
                )
            return value
        return None
