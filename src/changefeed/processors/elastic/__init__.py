"""Keeps an Elasticsearch index in sync: one bulk request per batch, guarded by versions.

Every write carries an external version (from the stub, or from the document), so a replayed
or late change can never overwrite newer data: Elasticsearch answers 409 and we count that as
done. The pillow writes through an alias; `bootstrap` creates the concrete index
``<alias>_<version or settings hash>`` with its settings and mappings and points the alias at
it, so a later reindex can build a new index and swap the alias.

Per-document rejections (a mapping conflict) come back as `ChangeFailure` while the rest of the
batch is indexed. Connection errors and 429/5xx answers are retried with bounded backoff; if
they persist the processor raises `SinkUnavailableError` and the pillow backs off.

Modules: `processor` (`ElasticProcessor`), `index` (names, bootstrap, aliases, a new index
swapped in), `bulk` (the bulk write path), `versions` (external versions), `errors`.
Every public name is importable from this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from changefeed.extras import require
from changefeed.lazy import lazy_names

if TYPE_CHECKING:
    from changefeed.processors.elastic.bulk import METADATA_FIELDS, RETRY_STATUSES
    from changefeed.processors.elastic.errors import (
        ElasticBootstrapError,
        ElasticDocumentError,
        ElasticIndexMissingError,
        ElasticVersionError,
    )
    from changefeed.processors.elastic.index import index_name
    from changefeed.processors.elastic.processor import ElasticProcessor, Transform
    from changefeed.processors.elastic.versions import (
        VERSION_TYPES,
        Document,
        VersionFunc,
        document_version,
        external_version,
        stub_version,
    )

__all__ = [
    "METADATA_FIELDS",
    "RETRY_STATUSES",
    "VERSION_TYPES",
    "Document",
    "ElasticBootstrapError",
    "ElasticDocumentError",
    "ElasticIndexMissingError",
    "ElasticProcessor",
    "ElasticVersionError",
    "Transform",
    "VersionFunc",
    "document_version",
    "external_version",
    "index_name",
    "stub_version",
]

# Imported on first use, after checking that the client is installed, so that code which runs
# without the elastic extra may still import the client-free `errors` module.
_WHERE = {
    "METADATA_FIELDS": "changefeed.processors.elastic.bulk",
    "RETRY_STATUSES": "changefeed.processors.elastic.bulk",
    "ElasticBootstrapError": "changefeed.processors.elastic.errors",
    "ElasticDocumentError": "changefeed.processors.elastic.errors",
    "ElasticIndexMissingError": "changefeed.processors.elastic.errors",
    "ElasticVersionError": "changefeed.processors.elastic.errors",
    "index_name": "changefeed.processors.elastic.index",
    "ElasticProcessor": "changefeed.processors.elastic.processor",
    "Transform": "changefeed.processors.elastic.processor",
    "VERSION_TYPES": "changefeed.processors.elastic.versions",
    "Document": "changefeed.processors.elastic.versions",
    "VersionFunc": "changefeed.processors.elastic.versions",
    "document_version": "changefeed.processors.elastic.versions",
    "external_version": "changefeed.processors.elastic.versions",
    "stub_version": "changefeed.processors.elastic.versions",
}

__getattr__, __dir__ = lazy_names(
    __name__, _WHERE, before=lambda: require("elasticsearch", extra="elastic")
)
