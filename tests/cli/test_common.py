"""What every command shares (`changefeed.cli.common`)."""

from __future__ import annotations

from click.testing import CliRunner

from changefeed.cli.common import cli


def test_usage_errors_of_click_itself_are_human_safe() -> None:
    """Click echoes a mistyped option as given; called directly (not through ``main``), the
    root group still escapes it, keeping the usage text and exit code 2 of a usage error."""
    result = CliRunner().invoke(cli, ["topics", "list", "--bad\x1b[2J"])
    assert result.exit_code == 2
    assert "\x1b" not in result.output
    assert "--bad\\x1b[2J" in result.output  # escaped, as the user can read it
    assert result.output.startswith("Usage: ")
