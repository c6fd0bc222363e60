"""``changefeed dashboard``: the web dashboard, on localhost unless given a token."""

from __future__ import annotations

import click

from changefeed.cli.common import check_exposure, cli, get_app, user_errors


@cli.command("dashboard")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8700, show_default=True)
@click.option(
    "--token",
    envvar="CHANGEFEED_DASHBOARD_TOKEN",
    help="Access token (required when --host is not loopback; env CHANGEFEED_DASHBOARD_TOKEN).",
)
@click.option(
    "--pillow",
    "pillow_names",
    multiple=True,
    metavar="NAME",
    help="Show only these pillows (repeatable; default all).",
)
@click.option(
    "--refresh",
    type=click.FloatRange(min=0.5),
    default=2.0,
    show_default=True,
    help="Seconds between status samples.",
)
@click.pass_context
def dashboard_cmd(
    ctx: click.Context,
    host: str,
    port: int,
    token: str | None,
    pillow_names: tuple[str, ...],
    refresh: float,
) -> None:
    """Serve the dashboard: lag, throughput, error queue (with retry), checkpoint history and
    a live stream of changes."""
    from changefeed.extras import require
    from changefeed.web import create_app

    uvicorn = require("uvicorn", extra="web")

    check_exposure(
        host, token, host_option="--host", token_option="--token",
        token_env="CHANGEFEED_DASHBOARD_TOKEN",
    )  # fmt: skip
    app = get_app(ctx)
    with user_errors():
        for name in pillow_names:
            app.get_pillow(name)
    web = create_app(app, token=token, pillow_names=pillow_names or None, sample_interval=refresh)
    shown = f"[{host}]" if ":" in host else host
    hint = " (append ?token=YOUR_TOKEN)" if token else ""
    click.echo(f"changefeed dashboard on http://{shown}:{port}/{hint}", err=True)
    uvicorn.run(
        web,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=3,
        proxy_headers=False,
    )
