"""Helpers shared by the server fixtures: free ports, readiness waits, skip-or-fail."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

import pytest

from changefeed.testing.servers import free_port, stop_process, wait_for_port

__all__ = ["IN_CI", "free_port", "start", "stop_process", "unavailable", "wait_for_port"]

IN_CI = bool(os.environ.get("CI"))


def unavailable(reason: str) -> None:
    """Skip on a developer machine; fail in CI, where .ci/run must have installed it."""
    if IN_CI:
        pytest.fail(f"required test server unavailable in CI: {reason}")
    pytest.skip(reason)


def start(cmd: Sequence[str], log_path: str, **kwargs: object) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")  # noqa: SIM115 - the server writes to it until stopped
    return subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, **kwargs)  # type: ignore[call-overload]
