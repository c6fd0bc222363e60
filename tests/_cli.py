"""Running the ``changefeed`` command as a user would, for the tests of the CLI: one place for
the subprocess call, the environment of the recorder test app, and the in-process call."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from changefeed.cli import main

ROOT = Path(__file__).resolve().parents[1]


def recorder_env(tmp_path: Path, partitions: int = 2) -> dict[str, str]:
    """An environment whose log, state and app (``tests.apps.recorder``) live in
    ``tmp_path``, without settings of the caller's shell that would change the output."""
    out = {
        **os.environ,
        "CHANGEFEED_LOG": f"sqlite:///{tmp_path}/log.db?partitions={partitions}",
        "CHANGEFEED_STATE": f"sqlite:///{tmp_path}/state.db",
        "CHANGEFEED_APP": "tests.apps.recorder:app",
        "RECORDER_OUT": str(tmp_path / "recorded.txt"),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }
    out.pop("CHANGEFEED_DEBUG", None)
    out.pop("RECORDER_TOPICS", None)
    return out


def cf(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``changefeed ARGS`` in a new process, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "changefeed", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def cf_in_process(
    capsys: pytest.CaptureFixture[str], *args: str, app: str | None = None
) -> tuple[int, str, str]:
    """``changefeed [--app APP] ARGS`` in this process, so the test can look at the app's
    objects afterwards: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        main(["--app", app, *args] if app is not None else list(args))
    out, err = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 0 if code is None else 1), out, err
