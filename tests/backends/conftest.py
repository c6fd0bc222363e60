"""Backends under test: every conformance test runs once per log URL.

The Kafka URL comes from the ``kafka_url`` fixture of tests/harness/kafka.py; while that
plugin does not exist the kafka parameter is skipped with the reason, and it runs on its
own as soon as the fixture appears.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from changefeed.backends import Backend, open_backend


@pytest.fixture(params=["sqlite", "kafka"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/log.db"
    try:
        url: str = request.getfixturevalue("kafka_url")
    except pytest.FixtureLookupError:
        pytest.skip("no kafka_url fixture yet (tests/harness/kafka.py is not installed)")
    return url


@pytest.fixture
def backend(backend_url: str) -> Iterator[Backend]:
    b = open_backend(backend_url)
    yield b
    b.close()
