"""``changefeed reindex`` driven as a user drives it, on pillows written as the docs show."""

from __future__ import annotations

import os
from pathlib import Path

from elasticsearch import Elasticsearch

from changefeed import SQLDocumentStore
from tests._cli import ROOT, cf


def test_reindex_of_the_documented_elasticsearch_pillow(
    tmp_path: Path, elasticsearch_url: str, es_alias: str
) -> None:
    """docs/processors.md makes the processor once, at module level: the mapping check
    before the reindex must not leave it closed for the reindex itself."""
    docs_url = f"sqlite:///{tmp_path}/docs.db"
    cases = SQLDocumentStore(docs_url, "cases")
    cases.create()
    for i in range(5):
        cases.save(f"case-{i}", {"name": f"Case {i}", "owner_id": "amina", "closed": i == 4})
    cases.close()
    env = {
        **os.environ,
        "CHANGEFEED_APP": "tests.apps.search:app",
        "CHANGEFEED_LOG": f"sqlite:///{tmp_path}/log.db",
        "CHANGEFEED_STATE": f"sqlite:///{tmp_path}/state.db",
        "SEARCH_ES": elasticsearch_url,
        "SEARCH_ALIAS": es_alias,
        "SEARCH_DOCS": docs_url,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }
    env.pop("CHANGEFEED_DEBUG", None)
    assert cf(env, "bootstrap").returncode == 0

    result = cf(env, "reindex", "case-search", "--no-progress")

    assert result.returncode == 0, result.stderr
    assert "5 documents from the stores" in result.stderr
    client = Elasticsearch(elasticsearch_url)
    try:
        client.indices.refresh(index=es_alias)
        assert client.count(index=es_alias)["count"] == 4  # the closed case is not indexed
    finally:
        client.close()
