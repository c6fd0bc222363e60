"""``changefeed supervise`` (also ``run --all``) and ``changefeed retry-runner``."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from changefeed.cli.common import (
    State,
    UserError,
    check_exposure,
    cli,
    get_app,
    get_runnable,
    user_errors,
)
from changefeed.cli.output import escape
from changefeed.cli.params import LIMIT
from changefeed.runner import run_runnable, stop_on_signals

if TYPE_CHECKING:
    from changefeed.app import App
    from changefeed.supervisor import Supervisor


def global_args(ctx: click.Context) -> list[str]:
    """The root options this command was given, to hand on to child processes."""
    state = ctx.find_object(State)
    args: list[str] = []
    if state is not None:
        if state.app_spec:
            args += ["--app", state.app_spec]
        if state.log_url:
            args += ["--log", state.log_url]
        if state.state_url:
            args += ["--state", state.state_url]
    return args


def check_metrics_access(host: str, token: str | None) -> None:
    """The metrics and health endpoints are guarded like the dashboard (`check_exposure`)."""
    check_exposure(
        host, token, host_option="--metrics-host", token_option="--metrics-token",
        token_env="CHANGEFEED_METRICS_TOKEN",
    )  # fmt: skip


def run_supervised(
    ctx: click.Context,
    pillow_names: Sequence[str],
    *,
    all_pillows: bool,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    metrics_token: str | None = None,
    retry_runner: bool = True,
    retry_interval: float = 5.0,
    stuck_after: float = 300.0,
    restart_stuck: bool = False,
    stop_timeout: float = 30.0,
    backoff_base: float = 1.0,
    backoff_max: float = 60.0,
    run_args: Sequence[str] = (),
) -> int:
    """Run pillows and other runnables (and the retry runner) under a `Supervisor` until
    SIGTERM/SIGINT; with ``metrics_port``, serve its health and metrics (behind
    ``metrics_token`` when given)."""
    from changefeed.backoff import Backoff
    from changefeed.supervisor import RESTART_BACKOFF, Supervisor, pillow_children

    if metrics_port is not None:
        _check_metrics(metrics_host, metrics_token)
    app = get_app(ctx)
    names = _names_to_supervise(app, pillow_names, all_pillows)
    pillows = [name for name in names if name in app.pillow_names]
    children = pillow_children(
        pillows,
        runnables=[name for name in names if name not in app.pillow_names],
        global_args=global_args(ctx),
        run_args=run_args,
        retry_runner=retry_runner,
        retry_interval=retry_interval,
    )
    with _metrics_dir(metrics_port is not None) as metrics_dir:
        supervisor = Supervisor(
            children,
            app=app,
            backoff=Backoff(base=backoff_base, factor=RESTART_BACKOFF.factor, cap=backoff_max),
            stuck_after=stuck_after,
            restart_stuck=restart_stuck,
            stop_timeout=stop_timeout,
            env=_child_env(metrics_dir),
            on_exit=_mark_dead if metrics_dir else None,
        )
        with (
            _serving_health(
                supervisor,
                app,
                pillows,
                metrics_dir,
                port=metrics_port,
                host=metrics_host,
                token=metrics_token,
            ),
            stop_on_signals(supervisor.stop, "supervisor"),
        ):
            code = supervisor.run()
    click.echo(f"supervisor: stopped {len(children)} children", err=True)
    return code


def _check_metrics(host: str, token: str | None) -> None:
    """Fail before any child starts when metrics cannot be served: they need the web extra
    (nothing else here does) and, off loopback, a token."""
    import changefeed.metrics  # noqa: F401 - one line (MissingExtraError) without the extra

    check_metrics_access(host, token)


def _names_to_supervise(app: App, pillow_names: Sequence[str], all_pillows: bool) -> list[str]:
    """The runnables to start, each once; an unknown name fails here, before any child
    starts."""
    if all_pillows and pillow_names:
        raise UserError("give pillow names or --all, not both")
    names = app.runnable_names if all_pillows else list(dict.fromkeys(pillow_names))
    if not names:
        raise UserError("no pillows to run (name some, or use --all with an app that defines some)")
    for name in names:
        get_runnable(app, name)
    return names


@contextmanager
def _metrics_dir(wanted: bool) -> Iterator[str | None]:
    """A folder where the children write their metrics (prometheus' multiprocess mode),
    removed when the supervisor ends; None without metrics."""
    if not wanted:
        yield None
        return
    path = tempfile.mkdtemp(prefix="changefeed-metrics-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _child_env(metrics_dir: str | None) -> dict[str, str]:
    """This process's environment, plus where to write metrics when they are served."""
    env = dict(os.environ)
    if metrics_dir is not None:
        from changefeed.metrics import MULTIPROC_ENV

        env[MULTIPROC_ENV] = metrics_dir
    return env


@contextmanager
def _serving_health(
    supervisor: Supervisor,
    app: App,
    pillows: Sequence[str],
    metrics_dir: str | None,
    *,
    port: int | None,
    host: str,
    token: str | None,
) -> Iterator[None]:
    """Serve the supervisor's /healthz and the children's /metrics on ``port`` (nothing
    when None) while the block runs."""
    if port is None or metrics_dir is None:
        yield
        return
    from changefeed.metrics import StatusCollector, multiprocess_registry
    from changefeed.supervisor import serve_health

    registry = multiprocess_registry(metrics_dir)
    registry.register(StatusCollector(app, pillows))
    try:
        server = serve_health(supervisor, port, host, registry, token=token)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc}") from None
    shown = f"[{host}]" if ":" in host else host
    hint = " (send Authorization: Bearer TOKEN or ?token=TOKEN)" if token else ""
    click.echo(
        f"metrics and health on http://{escape(shown)}:{server.server_port}/metrics "
        f"and /healthz{hint}",
        err=True,
    )
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def _mark_dead(child: object) -> None:
    from prometheus_client import multiprocess

    pid = getattr(getattr(child, "proc", None), "pid", None)
    if pid is not None:
        multiprocess.mark_process_dead(pid)


@cli.command("supervise")
@click.argument("pillow_names", nargs=-1, metavar="[PILLOW]...")
@click.option(
    "--all",
    "all_pillows",
    is_flag=True,
    help="Run every pillow and other runnable the app defines.",
)
@click.option("--metrics-port", type=click.IntRange(0, 65535), help="Serve /metrics and /healthz.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
@click.option(
    "--metrics-token",
    envvar="CHANGEFEED_METRICS_TOKEN",
    help="Token /metrics, /healthz and /livez require (needed when --metrics-host is not "
    "loopback; env CHANGEFEED_METRICS_TOKEN).",
)
@click.option("--no-retry-runner", is_flag=True, help="Do not run the error retry runner.")
@click.option("--retry-interval", type=click.FloatRange(min=0.1), default=5.0, show_default=True)
@click.option(
    "--stuck-after",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Seconds without checkpoint progress (while lag grows) before a pillow counts as stuck.",
)
@click.option("--restart-stuck", is_flag=True, help="Restart a pillow found stuck.")
@click.option("--stop-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True)
@click.option("--backoff-base", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option("--backoff-max", type=click.FloatRange(min=0), default=60.0, show_default=True)
@click.pass_context
def supervise_cmd(
    ctx: click.Context,
    pillow_names: tuple[str, ...],
    all_pillows: bool,
    metrics_port: int | None,
    metrics_host: str,
    metrics_token: str | None,
    no_retry_runner: bool,
    retry_interval: float,
    stuck_after: float,
    restart_stuck: bool,
    stop_timeout: float,
    backoff_base: float,
    backoff_max: float,
) -> None:
    """Run pillows, other runnables and the error retry runner as child processes,
    restarting crashed ones.

    SIGTERM/SIGINT stop every child after its current batch."""
    code = run_supervised(
        ctx,
        pillow_names,
        all_pillows=all_pillows,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        metrics_token=metrics_token,
        retry_runner=not no_retry_runner,
        retry_interval=retry_interval,
        stuck_after=stuck_after,
        restart_stuck=restart_stuck,
        stop_timeout=stop_timeout,
        backoff_base=backoff_base,
        backoff_max=backoff_max,
    )
    ctx.exit(code)


@cli.command("retry-runner")
@click.argument("pillow_names", nargs=-1, metavar="[PILLOW]...")
@click.option("--interval", type=click.FloatRange(min=0.1), default=5.0, show_default=True)
@click.option("--limit", type=LIMIT, default=500, show_default=True)
@click.option("--once", is_flag=True, help="One pass, then exit.")
@click.pass_context
def retry_runner_cmd(
    ctx: click.Context, pillow_names: tuple[str, ...], interval: float, limit: int, once: bool
) -> None:
    """Retry due error-queue entries of pillows (all by default) every INTERVAL seconds."""
    from changefeed.retry_runner import RetryRunner

    app = get_app(ctx)
    with user_errors():
        for name in pillow_names:
            app.get_pillow(name)
        runner = RetryRunner(app, pillow_names, interval=interval, limit=limit)
    if once:
        for name, (ok, failed) in runner.run_once().items():
            click.echo(f"{name}: {ok} resolved, {failed} failed again")
        return
    run_runnable(runner)
