"""External versions outside Elasticsearch's range (0..2^63-1) fail that change alone, as a
document error with a clear message, and are never sent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from changefeed.errors import PARKED
from changefeed.processors.elastic import document_version
from tests.doubles.rig import CaseRig, PillowRig
from tests.processors.test_elastic import processor, source


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[CaseRig]:
    rig = PillowRig.cases(tmp_path, "es-versions")
    yield rig
    rig.close()


def test_out_of_range_versions_are_document_errors_never_sent(
    rig: CaseRig, es: Elasticsearch, elasticsearch_url: str, es_alias: str
) -> None:
    proc = processor(
        elasticsearch_url, es_alias, version=document_version(lambda doc: doc.get("v"))
    )
    rig.save("ok", {"name": "fine", "v": 2**63 - 1})
    rig.save("neg", {"name": "negative", "v": -1})
    rig.save("big", {"name": "too big", "v": 2**63})
    rig.save("zero", {"name": "zero", "v": 0})
    rig.pillow(proc).run(forever=False)

    assert source(es, es_alias, "ok") == {"name": "fine", "v": 2**63 - 1}
    assert source(es, es_alias, "zero") == {"name": "zero", "v": 0}
    assert source(es, es_alias, "neg") is None and source(es, es_alias, "big") is None
    records = {r.document_id: r for r in rig.errors.list("es-versions")}
    assert set(records) == {"neg", "big"}
    for doc_id, value in (("neg", -1), ("big", 2**63)):
        record = records[doc_id]
        assert record.status == PARKED  # the same change would fail the same way again
        assert "external version" in record.message and str(value) in record.message
        assert "0" in record.message and str(2**63 - 1) in record.message
