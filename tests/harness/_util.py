"""Helpers shared by the server fixtures: free ports, readiness waits, skip-or-fail."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Sequence

import pytest

IN_CI = bool(os.environ.get("CI"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def unavailable(reason: str) -> None:
    """Skip on a developer machine; fail in CI, where .ci/run must have installed it."""
    if IN_CI:
        pytest.fail(f"required test server unavailable in CI: {reason}")
    pytest.skip(reason)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop a server we started, by its PID: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def start(cmd: Sequence[str], log_path: str, **kwargs: object) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")  # noqa: SIM115 - the server writes to it until stopped
    return subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, **kwargs)  # type: ignore[call-overload]
