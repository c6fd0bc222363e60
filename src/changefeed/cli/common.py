"""The root command group and what every command shares: the app, user errors, output."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click

from changefeed.backends import BackendURLError, FeedOptionError, LogUnavailableError
from changefeed.cli.commands import COMMANDS
from changefeed.cli.output import human
from changefeed.extras import MissingExtraError
from changefeed.identifiers import InvalidIdentifierError

if TYPE_CHECKING:
    # Imported where used: the app module loads SQLAlchemy, which ``--help`` does not need.
    from changefeed.app import App
    from changefeed.runner import Runnable

F = TypeVar("F", bound=Callable[..., Any])


class UserError(Exception):
    """Bad input or configuration: reported on one line with exit code 2.

    The message is made human-safe here (credentials redacted, control characters escaped,
    so also one line), whichever command raised it."""

    def __init__(self, message: object) -> None:
        super().__init__(human(message))


MIN_TOKEN_LENGTH = 16
"""Access tokens shorter than this are refused: they could be guessed."""


def check_exposure(
    host: str, token: str | None, *, host_option: str, token_option: str, token_env: str
) -> None:
    """A server bound to an address other machines reach needs an access token, of
    `MIN_TOKEN_LENGTH` characters at least (the dashboard and the metrics endpoints)."""
    from changefeed.web.security import is_loopback

    if not is_loopback(host) and not token:
        raise UserError(
            f"{host_option} {host} is reachable from other machines: give {token_option} "
            f"(or {token_env})"
        )
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise UserError(f"{token_option} must be at least {MIN_TOKEN_LENGTH} characters")


def _user_error_types() -> tuple[type[BaseException], ...]:
    from changefeed.app import ConfigError
    from changefeed.processors.reports.spec import ReportConfigError

    return (
        ConfigError,
        ReportConfigError,  # a report data source an app builds that does not validate
        BackendURLError,
        FeedOptionError,  # a pillow's feed_options naming an option its log lacks
        InvalidIdentifierError,
        MissingExtraError,
        LogUnavailableError,  # a log URL naming no reachable server: one line naming it
    )


@contextmanager
def user_errors(*extra: type[BaseException]) -> Iterator[None]:
    """Turn the errors a user can cause into `UserError`."""
    try:
        yield
    except (*_user_error_types(), *extra) as exc:
        raise UserError(exc) from None


class State:
    """Lazily loaded app, so ``--help`` works without importing user code."""

    def __init__(self, app_spec: str | None, log_url: str | None, state_url: str | None) -> None:
        self.app_spec = app_spec
        self.log_url = log_url
        self.state_url = state_url
        self._app: App | None = None

    @property
    def app(self) -> App:
        if self._app is None:
            from changefeed.app import load_app

            with user_errors():
                app = load_app(self.app_spec)
                if self.log_url:
                    app.log_url = self.log_url
                if self.state_url:
                    app.state_url = self.state_url
                app.read_only = False  # until a command says it only looks (`get_app`)
                app.check_log()  # a bad log URL is a user error now; nothing is created
            self._app = app
        return self._app


class _Group(click.Group):
    """The root group: a configuration error from wherever the app opens its log or state
    (`App.backend`, `App.checkpoints` raise `ConfigError`) is a user error in every
    command, and every message click itself prints (usage errors echo the bad argument,
    which may be a URL with a password or hold control characters) is made human-safe.

    Commands are imported when they run, not before (`changefeed.cli.commands`): the help
    lists them from that table."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        lazy = COMMANDS.get(cmd_name)
        if cmd_name not in self.commands and lazy is not None:
            for module in lazy.modules:
                importlib.import_module(f"changefeed.cli.{module}")
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        hidden = {name for name, command in self.commands.items() if command.hidden}
        names = [name for name in self.list_commands(ctx) if name not in hidden]
        limit = formatter.width - 6 - max(map(len, names))
        rows = [(name, self._short_help(name, limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def _short_help(self, name: str, limit: int) -> str:
        """The loaded command's own short help, or the same made from the table's text."""
        command = self.commands.get(name) or click.Command(name, help=COMMANDS[name].help)
        return command.get_short_help_str(limit)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with user_errors():
                return super().invoke(ctx)
        except click.ClickException as exc:
            raise _human_safe(exc) from None


def _human_safe(exc: click.ClickException) -> click.ClickException:
    """``exc``, or the same message made human-safe in a new exception of the same kind
    (usage or not), since click's exception messages are final once made."""
    message = exc.format_message()
    safe = human(message)
    if safe == message:
        return exc
    if isinstance(exc, click.UsageError):
        return click.UsageError(safe, exc.ctx)
    return click.ClickException(safe)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--app",
    "app_spec",
    metavar="MODULE:ATTR",
    help="Your changefeed.App (default: $CHANGEFEED_APP).",
)
@click.option(
    "--log", "log_url", metavar="URL", help="Log URL (sqlite:///path or kafka://host:port)."
)
@click.option(
    "--state", "state_url", metavar="URL", help="SQLAlchemy URL of checkpoints and errors."
)
@click.version_option(package_name="changefeed")
@click.pass_context
def cli(
    ctx: click.Context, app_spec: str | None, log_url: str | None, state_url: str | None
) -> None:
    """changefeed: publish document changes to a log and keep derived data in sync."""
    ctx.obj = State(app_spec, log_url, state_url)


def get_app(ctx: click.Context, *, read_only: bool = False) -> App:
    """The user's app; ``read_only`` for commands that only look, so that they leave no
    log or state database behind where there was none (`App.read_only`)."""
    state = ctx.find_object(State)
    assert state is not None
    app = state.app
    if read_only:
        app.read_only = True
    return app


def get_runnable(app: App, name: str) -> Runnable:
    """A pillow or other runnable by name; an unknown name is a user error (worded for
    pillows first: that is what most names are)."""
    if not app.runnable_names:
        from changefeed.app import NO_APP

        raise UserError(f"unknown pillow {name!r}: {NO_APP}")
    if name not in app.runnable_names:
        known = ", ".join(app.runnable_names)
        raise UserError(f"unknown pillow {name!r} or other runnable (known: {known})")
    with user_errors():
        return app.get_runnable(name)
