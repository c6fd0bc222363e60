"""Fixtures shared by the processor tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from elasticsearch import Elasticsearch


@pytest.fixture
def es(elasticsearch_url: str) -> Iterator[Elasticsearch]:
    """An Elasticsearch client on the test server, closed after the test."""
    client = Elasticsearch(elasticsearch_url)
    yield client
    client.close()
