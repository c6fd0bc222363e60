"""Helpers shared by the server fixtures: free ports, readiness waits, skip-or-fail."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence

import pytest

from changefeed.testing.servers import free_port, stop_process, wait_for_port

__all__ = [
    "IN_CI",
    "free_port",
    "start",
    "stop_process",
    "unavailable",
    "wait_for_port",
    "wait_until",
]

IN_CI = bool(os.environ.get("CI"))


def unavailable(reason: str) -> None:
    """Skip on a developer machine; fail in CI, where .ci/run must have installed it."""
    if IN_CI:
        pytest.fail(f"required test server unavailable in CI: {reason}")
    pytest.skip(reason)


def start(cmd: Sequence[str], log_path: str, **kwargs: object) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")  # noqa: SIM115 - the server writes to it until stopped
    return subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, **kwargs)  # type: ignore[call-overload]


def wait_until(predicate: Callable[[], bool], what: str = "", timeout: float = 60.0) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``timeout`` seconds (a
    guard against a hang, never a measure of speed)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.02)
