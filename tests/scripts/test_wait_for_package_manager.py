"""``scripts/wait-for-package-manager``: ``scripts/test`` waits while another process holds the
package manager's lock, and says so, instead of failing with no test run (issue 20 item 23).

A temporary file held open by a child process stands in for dpkg's lock: the script sees
holders the way it sees dpkg's (``fuser``), and the test releases the lock only after the
script said what it waits for, so nothing depends on timing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "wait-for-package-manager"

pytestmark = pytest.mark.skipif(shutil.which("fuser") is None, reason="needs fuser (psmisc)")

HOLD = "import sys; f = open(sys.argv[1]); print('held', flush=True); sys.stdin.read()"


@pytest.fixture
def held_lock(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A lock file and the process holding it open until its stdin is closed."""
    lock = tmp_path / "lock-frontend"
    lock.touch()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    yield lock, holder
    if holder.stdin is not None and not holder.stdin.closed:
        holder.stdin.close()
    holder.wait(timeout=30)


def test_waits_for_the_holder_and_says_so(held_lock: tuple[Path, subprocess.Popen[str]]) -> None:
    lock, holder = held_lock
    waiting = subprocess.Popen(
        [str(SCRIPT), str(lock)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert waiting.stdout is not None
    said = waiting.stdout.readline()
    assert said.startswith("waiting for the package manager:"), said
    assert f"PID {holder.pid} " in said, said
    assert waiting.poll() is None  # still waiting while the lock is held
    assert holder.stdin is not None
    holder.stdin.close()
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert out == "the package manager is free: installing\n"


def test_gives_up_after_its_timeout_with_one_line(
    held_lock: tuple[Path, subprocess.Popen[str]],
) -> None:
    lock, holder = held_lock
    env = {**os.environ, "PACKAGE_LOCK_TIMEOUT": "0"}
    done = subprocess.run(
        [str(SCRIPT), str(lock)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr == (
        f"the package manager is still busy after 0 s (PID {holder.pid}): try again later\n"
    )


def test_a_free_lock_goes_on_at_once_and_quietly(tmp_path: Path) -> None:
    lock = tmp_path / "lock-frontend"
    lock.touch()
    done = subprocess.run([str(SCRIPT), str(lock)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
