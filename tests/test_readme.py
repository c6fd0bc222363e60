"""The README's "your first pillow" example runs as written, and its CLI lines work."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def first_pillow_source() -> str:
    text = README.read_text()
    section = text.split("## Your first pillow", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README has no python example under 'Your first pillow'"
    return match.group(1)


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(cwd), str(Path(__file__).resolve().parents[1] / "src")]),
    }
    env.pop("CHANGEFEED_APP", None)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_first_pillow_example_runs_and_resumes(tmp_path: Path) -> None:
    (tmp_path / "first_pillow.py").write_text(first_pillow_source())
    first = run([sys.executable, "first_pillow.py"], tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "3 ['Case 0', 'Case 1', 'Case 2']"
    again = run([sys.executable, "first_pillow.py"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "3 ['Case 0', 'Case 1', 'Case 2']"

    status = run(
        [sys.executable, "-m", "changefeed", "--app", "first_pillow:app", "status", "--json"],
        tmp_path,
    )
    assert status.returncode == 0, status.stderr
    [pillow] = json.loads(status.stdout)
    assert pillow["pillow"] == "case-names"
    # Two runs published 6 changes; the checkpoint is at the head of the log.
    assert pillow["lag"] == 0
    assert sum(p["head"] for p in pillow["partitions"]) == 6

    tail = run(
        [
            sys.executable,
            "-m",
            "changefeed",
            "--app",
            "first_pillow:app",
            "tail",
            "case",
            "-n",
            "2",
        ],
        tmp_path,
    )
    assert tail.returncode == 0, tail.stderr
    lines = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [line["offset"] for line in lines] == [4, 5]
    assert lines[-1]["stub"]["document_id"] == "case-2"
