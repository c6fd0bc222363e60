"""``changefeed demo``: publish, process and verify on the embedded default."""

from __future__ import annotations

import shlex
import shutil
import tempfile
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from changefeed.cli.common import cli
from changefeed.cli.output import escape


@cli.command("demo")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the demo's files here (default: a temporary folder, removed after).",
)
@click.option("--cases", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--forms", type=click.IntRange(min=1), default=600, show_default=True)
@click.option(
    "--updates",
    type=click.IntRange(min=0),
    default=3000,
    show_default=True,
    help="Changes to make after the documents are created.",
)
def demo_cmd(directory: Path | None, cases: int, forms: int, updates: int) -> None:
    """Create sample cases and forms, publish their changes, keep two report tables in
    sync while documents keep changing, and prove the tables match the source."""
    from changefeed.demo import APP_MODULE, Demo, write_app_module

    console = Console()
    keep = directory is not None
    path = directory if directory is not None else Path(tempfile.mkdtemp(prefix="changefeed-demo-"))
    if keep and any(path.glob("*.db")):
        raise click.UsageError(f"{path} already holds a demo; pass an empty or new --dir")
    where = f" in {escape(str(path))}" if keep else ""
    console.print(
        f"[bold]changefeed demo[/bold]: embedded log, document store and report tables{where}"
    )
    demo = Demo(path, cases=cases, forms=forms, updates=updates)
    try:
        result = demo.run(console)
    finally:
        demo.close()
        if not keep:
            shutil.rmtree(path, ignore_errors=True)
    table = Table(
        "report table",
        "rows",
        "missing",
        "extra",
        "different",
        title="Report tables vs. source documents",
    )
    for name, (rows, missing, extra, different) in result.tables.items():
        table.add_row(name, str(rows), str(missing), str(extra), str(different))
    console.print(table)
    console.print(
        f"{result.writes} document writes, {result.published} changes published and processed "
        f"in {result.seconds:.1f}s"
    )
    if keep:
        write_app_module(path)
        shown = shlex.quote(str(path.resolve()))
        # Plain echo: the console would wrap a long path and break the commands to copy.
        click.echo(f"The demo's files are kept in {escape(str(path))}; inspect them with:")
        for command in ("status", "checkpoint history", "errors list"):
            click.echo(f"  cd {escape(shown)} && changefeed --app {APP_MODULE}:app {command}")
    else:
        console.print("The demo's temporary files are removed; pass --dir DIR to keep them.")
    if result.ok:
        console.print(
            "[bold green]OK[/bold green]: every report table matches its source documents."
        )
    else:
        console.print("[bold red]MISMATCH[/bold red]: a report table differs from its source.")
        raise SystemExit(1)
