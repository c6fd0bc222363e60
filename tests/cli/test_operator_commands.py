"""Operator commands as the docs describe them (issue 20), driven as a user drives them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._cli import cf, recorder_env


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return recorder_env(tmp_path)


def _one_error_line(result: object) -> str:
    stderr = getattr(result, "stderr", "")
    lines = stderr.strip().splitlines()
    assert getattr(result, "returncode", None) == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("changefeed: error:"), stderr
    return str(lines[0])


def test_an_app_attribute_that_is_not_an_app_is_one_line(env: dict[str, str]) -> None:
    line = _one_error_line(cf(env, "--app", "json:dumps", "status"))
    assert "json:dumps is not a changefeed.App" in line


@pytest.mark.parametrize("command", [("run", "recorder"), ("reindex", "recorder")])
def test_a_pillow_named_without_an_app_says_no_app_was_given(
    env: dict[str, str], command: tuple[str, ...]
) -> None:
    del env["CHANGEFEED_APP"]
    line = _one_error_line(cf(env, *command))
    assert "no app was given (--app or CHANGEFEED_APP)" in line
