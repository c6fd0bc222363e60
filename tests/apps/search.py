"""A test app shaped as docs/processors.md shows an Elasticsearch pillow: the processor made
once at module level (from a URL, so it owns its client) and handed to the pillow factory,
which the CLI may call more than once in one command.

Configured by environment variables so tests drive it through the real CLI:
``SEARCH_ES`` (the Elasticsearch URL), ``SEARCH_ALIAS``, ``SEARCH_DOCS`` (the SQL document
store's URL); the log and state come from ``CHANGEFEED_LOG`` and ``CHANGEFEED_STATE``.
"""

from __future__ import annotations

import os

from changefeed import App, Pillow, SQLDocumentStore
from changefeed.processors.elastic import ElasticProcessor
from changefeed.stores.base import Document

app = App()
cases = SQLDocumentStore(os.environ["SEARCH_DOCS"], "cases")
app.document_stores.register(cases)


def case_to_index(doc: Document) -> Document | None:
    if doc.get("closed"):
        return None
    return {"name": doc["name"], "owner_id": doc["owner_id"]}


cases_index = ElasticProcessor(
    os.environ["SEARCH_ES"],
    os.environ["SEARCH_ALIAS"],
    mappings={"properties": {"name": {"type": "text"}, "owner_id": {"type": "keyword"}}},
    settings={"number_of_shards": 1},
    transform=case_to_index,
)


@app.pillow("case-search")
def case_search(app: App) -> Pillow:
    return app.constructed_pillow("case-search", ["case"], cases_index)
