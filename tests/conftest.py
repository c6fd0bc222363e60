"""Test configuration: server fixtures live in tests/harness/, one module per server, and are
loaded here as pytest plugins so each can be written and changed on its own."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = sorted(
    f"tests.harness.{p.stem}"
    for p in (Path(__file__).parent / "harness").glob("*.py")
    if not p.stem.startswith("_")
)
