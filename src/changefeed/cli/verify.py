"""``changefeed verify PILLOW`` and the ``--docs`` mode of ``changefeed run``: checking a
pillow's output against its document stores, and re-processing chosen documents now."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import orjson
from rich.console import Console

from changefeed.batch import latest_per_document
from changefeed.change import Change, ChangeMeta, InvalidChangeError
from changefeed.cli.common import UserError, cli, get_app, user_errors
from changefeed.cli.output import plural
from changefeed.cli.params import CHUNK, SAMPLE
from changefeed.failures import DependencyDownError
from changefeed.pillow import Pillow
from changefeed.processors.reports import ReportSchemaError
from changefeed.reindex import ReindexError, reindex_stores
from changefeed.stores.base import DocumentStore
from changefeed.verify import KINDS, VerifyResult, verify_pillow

DOCS_TOPIC = "docs"
"""The topic name of changes read from a ``--docs`` file (they come from no log)."""


def _close(pillow: Pillow) -> None:
    for processor in pillow.processors:
        processor.close()
    pillow.change_feed.close()


def describe(result: VerifyResult) -> list[str]:
    """The text report: one line per processor, then the verdict."""
    how = f"a sample of {result.sample}" if result.sample is not None else "all"
    lines = [
        f"{result.pillow}: {plural(result.documents, 'document')} checked ({how}) in "
        f"{result.seconds:.1f}s"
    ]
    for report in result.processors:
        if not report.verifiable:
            lines.append(f"  {report.processor}: cannot be verified")
            continue
        counts = "  ".join(f"{kind} {getattr(report, kind)}" for kind in KINDS)
        line = f"  {report.processor}: checked {report.checked}  {counts}"
        if result.repair:
            line += f"  repaired {report.repaired}"
        lines.append(line)
        for kind, ids in report.examples.items():
            if ids:
                more = getattr(report, kind) - len(ids)
                lines.append(
                    f"    {kind}: {', '.join(ids)}" + (f" (and {more} more)" if more > 0 else "")
                )
    if not result.drift:
        lines.append("no drift")
    elif result.unrepaired:
        hint = "" if result.repair else f"; `changefeed verify {result.pillow} --repair` fixes it"
        differ = "document differs" if result.unrepaired == 1 else "documents differ"
        lines.append(f"DRIFT: {result.unrepaired} {differ} from their stores{hint}")
    else:
        lines.append(f"repaired: all {result.drift} drifted documents now match their stores")
    return lines


@cli.command("verify")
@click.argument("pillow_name", metavar="PILLOW")
@click.option(
    "--sample",
    type=SAMPLE,
    metavar="N",
    help="Check N random documents (and N random output ids) instead of all.",
)
@click.option("--all", "check_all", is_flag=True, help="Check every document (the default).")
@click.option(
    "--repair",
    is_flag=True,
    help="Re-process the drifted documents through the pillow's processors (checkpoints stay).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report on stdout.")
@click.option(
    "--chunk-size",
    type=CHUNK,
    default=1000,
    show_default=True,
    help="Documents compared per step.",
)
@click.pass_context
def verify_cmd(
    ctx: click.Context,
    pillow_name: str,
    sample: int | None,
    check_all: bool,
    repair: bool,
    as_json: bool,
    chunk_size: int,
) -> None:
    """Compare each processor's output with what the document stores say it should be:
    checked, missing, extra, stale, different. Exit code 1 when drift was found and not
    repaired (for cron), 0 otherwise."""
    if sample is not None and check_all:
        raise UserError("--sample and --all exclude each other")
    app = get_app(ctx)
    with user_errors(ReindexError):
        pillow = app.get_pillow(pillow_name)
    try:
        with user_errors(ReindexError, ReportSchemaError):
            result = verify_pillow(
                pillow,
                sample=sample,
                repair=repair,
                chunk_size=chunk_size,
                show_progress=not as_json and Console(stderr=True).is_terminal,
            )
    except DependencyDownError as exc:
        click.echo(f"changefeed: failed: repair stopped, a dependency is down: {exc}", err=True)
        ctx.exit(1)
    finally:
        _close(pillow)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        for line in describe(result):
            click.echo(line)
    ctx.exit(1 if result.unrepaired else 0)


# -- changefeed run PILLOW --docs F ----------------------------------------------------------


def single_store(pillow: Pillow) -> DocumentStore:
    """The one store plain ids in a ``--docs`` file can belong to."""
    with user_errors(ReindexError):
        stores = reindex_stores(pillow)
    if len(stores) != 1:
        names = ", ".join(f"{s.data_source_type}/{s.data_source_name}" for s in stores)
        raise UserError(
            f"pillow {pillow.name!r} reads {len(stores)} document stores ({names}): "
            "a --docs file of plain ids is ambiguous; give JSON lines of stubs instead"
        )
    return stores[0]


def read_docs(path: Path, pillow: Pillow) -> Iterator[ChangeMeta]:
    """Stubs from a file of ids (one per line) or JSON lines of stubs; blank lines and
    ``#`` comments are skipped. Bad lines are user errors naming the line."""
    store: DocumentStore | None = None
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        for number, raw in enumerate(handle, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("{"):
                try:
                    yield ChangeMeta.from_dict(_stub_of(orjson.loads(line)))
                except (orjson.JSONDecodeError, InvalidChangeError) as exc:
                    raise UserError(f"{path}:{number}: not a valid stub: {exc}") from None
                continue
            if store is None:
                store = single_store(pillow)
            yield ChangeMeta(line, store.data_source_type, store.data_source_name)


def _stub_of(line: Any) -> Any:
    """The stub of a JSON line: the line itself, or its ``stub`` when it is a line the CLI
    prints (``changes --json``, ``tail``, ``checkpoint dump-remaining``: position, then the
    stub), so their output can be handed to ``run --docs`` as it is."""
    if isinstance(line, dict) and isinstance(line.get("stub"), dict):
        stub = line["stub"]
        if "invalid" in stub and "document_id" not in stub:
            raise InvalidChangeError(f"the log holds no valid stub here ({stub['invalid']})")
        return stub
    return line


def run_docs(pillow: Pillow, path: Path, *, bootstrap: bool = True) -> tuple[int, int]:
    """Process exactly the documents of ``path`` through the pillow's processors now, with
    its fetch, dedupe and failure policy, without reading the log or touching checkpoints.
    Returns (documents processed, failures sent to the error queue)."""
    metas = list(read_docs(path, pillow))
    if not metas:
        raise UserError(f"{path} lists no documents")
    if bootstrap:
        with user_errors(ReportSchemaError):
            pillow.bootstrap()
    changes = latest_per_document([Change(DOCS_TOPIC, 0, i, meta) for i, meta in enumerate(metas)])
    failures = 0
    size = pillow.batching.batch_size
    for start in range(0, len(changes), size):
        failures += pillow.runner.process(changes[start : start + size]).failures
    return len(changes), failures


def run_docs_command(
    ctx: click.Context,
    pillow_names: tuple[str, ...],
    docs: str,
    *,
    bootstrap: bool,
    alone: bool = True,
) -> None:
    """``changefeed run PILLOW --docs F`` (called from the ``run`` command); ``alone`` is
    False when options that only make sense for reading the log came with it."""
    if len(pillow_names) != 1 or not alone:
        raise UserError("--docs takes exactly one pillow name, without --all or --once")
    app = get_app(ctx)
    with user_errors():
        pillow = app.get_pillow(pillow_names[0])
    try:
        try:
            done, failures = run_docs(pillow, Path(docs), bootstrap=bootstrap)
        except DependencyDownError as exc:
            click.echo(
                f"changefeed: failed: {pillow.name}: a dependency is down ({exc}); "
                "run again when it is back (processing is idempotent)",
                err=True,
            )
            ctx.exit(1)
    finally:
        _close(pillow)
    note = f", {failures} failed (see `changefeed errors`)" if failures else ""
    click.echo(f"{pillow.name}: {plural(done, 'document')} processed{note}", err=True)
    ctx.exit(1 if failures else 0)
