"""The ``changefeed`` command.

Each command group lives in its own module under ``changefeed.cli`` and registers itself on
`cli` when imported, which happens only when it runs (`changefeed.cli.commands`); `main`
turns every error a user can cause into one line on stderr and exit code 2.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from changefeed.cli.common import UserError, cli
from changefeed.cli.output import human, install_log_filters


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors, exit code 2 for bad input, 1 for failures."""
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
