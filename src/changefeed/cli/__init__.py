"""The ``changefeed`` command.

Each command group lives in its own module under ``changefeed.cli`` and registers itself on
`cli`; `main` turns every error a user can cause into one line on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys

import click

from changefeed.cli.common import UserError, cli
from changefeed.cli.output import human, install_log_filters

# Command modules; each attaches its commands to `cli` when imported.
COMMAND_MODULES = (
    "pillows",
    "checkpoint",
    "surgery",
    "changes",
    "errors",
    "tail",
    "demo",
    "topics",
    "outbox",
    "cdc",
    "reports",
    "reindex",
    "supervise",
    "dashboard",
    "verify",
    "republish",
)


def _load_commands() -> None:
    for name in COMMAND_MODULES:
        module = f"changefeed.cli.{name}"
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors, exit code 2 for bad input, 1 for failures."""
    _load_commands()
    debug = bool(os.environ.get("CHANGEFEED_DEBUG"))
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    install_log_filters()
    try:
        code = cli.main(args=argv, prog_name="changefeed", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("changefeed: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"changefeed: error: {human(exc.format_message())}", err=True)
        sys.exit(2)
    except UserError as exc:
        click.echo(f"changefeed: error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as exc:
        if debug:
            raise
        click.echo(
            f"changefeed: failed: {type(exc).__name__}: {human(exc)} "
            "(set CHANGEFEED_DEBUG=1 for details)",
            err=True,
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
