"""The root group loads a command's module only when it runs (issue 20 item 22): the table of
`changefeed.cli.commands` must say what the modules define, and ``changefeed --help`` must
import no backend, processor or SQLAlchemy."""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import click

import changefeed.cli
from changefeed.cli.commands import COMMANDS
from changefeed.cli.common import cli

ROOT = Path(__file__).resolve().parents[2]

HEAVY = (
    "sqlalchemy",
    "elasticsearch",
    "psycopg",
    "psycopg2",
    "confluent_kafka",
    "redis",
    "starlette",
    "uvicorn",
    "httpx",
    "prometheus_client",
)


def _every_command() -> dict[str, click.Command]:
    for module in pkgutil.iter_modules(changefeed.cli.__path__):
        importlib.import_module(f"changefeed.cli.{module.name}")
    return dict(cli.commands)


def _defining_modules(command: click.Command) -> set[str]:
    """The modules (under ``changefeed.cli``) of ``command``'s callback and of all its
    subcommands' callbacks."""
    own = {command.callback.__module__} if command.callback is not None else set()
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            own |= {f"changefeed.cli.{name}" for name in _defining_modules(sub)}
    return {name.removeprefix("changefeed.cli.") for name in own}


def test_the_table_names_every_command_and_where_it_lives() -> None:
    commands = _every_command()
    assert sorted(COMMANDS) == sorted(commands)
    for name, command in commands.items():
        assert _defining_modules(command) <= set(COMMANDS[name].modules), name


def test_the_listed_help_is_each_commands_own_at_every_width() -> None:
    for name, command in _every_command().items():
        for limit in (20, 45, 60, 74, 1000):
            listed = click.Command(name, help=COMMANDS[name].help)
            assert listed.get_short_help_str(limit) == command.get_short_help_str(limit), (
                name,
                limit,
            )


def test_help_imports_no_backend_processor_or_sqlalchemy() -> None:
    code = (
        "import sys\n"
        "from changefeed.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        f"print('loaded:', *sorted(n for n in {HEAVY!r} if n in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Commands:" in done.stdout
    assert all(f"  {name} " in done.stdout for name in COMMANDS), done.stdout
    assert done.stdout.splitlines()[-1] == "loaded:", done.stdout
