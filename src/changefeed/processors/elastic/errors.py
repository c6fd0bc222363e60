"""What can go wrong writing to Elasticsearch, by whose fault: the setup's, one document's,
or the sink's (the index is missing, so the pillow backs off instead of queuing documents)."""

from __future__ import annotations

from collections.abc import Mapping

from changefeed.failures import DocumentError


class ElasticBootstrapError(RuntimeError):
    """The index or alias cannot be set up as configured."""


class ElasticDocumentError(RuntimeError):
    """Elasticsearch rejected one document (e.g. a value that does not fit the mapping)."""

    def __init__(self, document_id: str, status: int, error: object) -> None:
        if isinstance(error, Mapping):
            reason = f"{error.get('type', 'error')}: {error.get('reason', '')}"
        else:
            reason = str(error)
        super().__init__(f"document {document_id!r} rejected with status {status}: {reason}")
        self.status = status
        self.error = error


class ElasticVersionError(DocumentError):
    """A change's external version is outside what Elasticsearch accepts (0 to 2^63-1):
    sending it would fail the whole request or be rejected, so the change fails alone."""


class ElasticIndexMissingError(ElasticDocumentError):
    """The index or alias to write to does not exist (yet): the sink is not set up, so the
    pillow backs off until ``changefeed bootstrap`` creates it, instead of queuing every
    document."""
