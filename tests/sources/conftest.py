"""Fixtures shared by the publishing-source tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from changefeed.app import App


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    """An app on an embedded log and SQLite state in the test's temp dir."""
    a = App(f"sqlite:///{tmp_path}/log.db", f"sqlite:///{tmp_path}/state.db")
    yield a
    a.close()
