"""``changefeed republish --store NAME (--id ID... | --ids-file F | --all) [--topic T]``:
publish fresh stubs for documents from their store, so every pillow on the topic processes
them again (after a bug fix, or for documents whose change never made it to the log)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import click

from changefeed.app import App
from changefeed.change import ChangeMeta
from changefeed.cli.common import UserError, cli, get_app, user_errors
from changefeed.cli.output import escape, plural
from changefeed.identifiers import topic_name
from changefeed.stores.base import DocumentStore

CHUNK = 1000
TYPE_FIELDS = ("doc_type", "document_type", "type")
"""Document fields a stub's ``document_type`` (which routes it) is read from, first found."""


def find_store(app: App, name: str) -> DocumentStore:
    """A registered store by ``data_source_type/data_source_name``, or by its name alone
    when only one store has it."""
    stores = list(app.document_stores)
    if "/" in name:
        kind, _, source = name.partition("/")
        try:
            return app.document_stores.get(kind, source)
        except LookupError:
            pass
    else:
        matches = [s for s in stores if s.data_source_name == name]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            names = ", ".join(f"{s.data_source_type}/{s.data_source_name}" for s in matches)
            raise UserError(f"store name {name!r} is ambiguous ({names}): give TYPE/NAME")
    known = ", ".join(f"{s.data_source_type}/{s.data_source_name}" for s in stores) or "none"
    raise UserError(f"unknown document store {name!r} (registered: {known})")


def read_ids(path: Path) -> list[str]:
    """Ids one per line; blank lines and ``#`` comments skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _chunks(ids: Iterable[str]) -> Iterator[list[str]]:
    it = iter(ids)
    while chunk := list(islice(it, CHUNK)):
        yield chunk


def stub_for(store: DocumentStore, doc_id: str, doc: object, doc_type: str | None) -> ChangeMeta:
    """A fresh stub: the store's version, the document's type and domain; a deletion for a
    document the store knows to be deleted."""
    if not isinstance(doc, dict):
        return ChangeMeta(
            doc_id,
            store.data_source_type,
            store.data_source_name,
            document_type=doc_type,
            is_deletion=True,
        )
    if doc_type is None:
        doc_type = next((v for f in TYPE_FIELDS if isinstance(v := doc.get(f), str) and v), None)
    domain = doc.get("domain")
    return ChangeMeta(
        doc_id,
        store.data_source_type,
        store.data_source_name,
        document_type=doc_type,
        domain=domain if isinstance(domain, str) and domain else None,
        version=store.document_version(doc),
    )


@cli.command("republish")
@click.option("--store", "store_name", required=True, metavar="NAME", help="TYPE/NAME or NAME.")
@click.option("--id", "doc_ids", multiple=True, metavar="ID", help="A document id (repeatable).")
@click.option(
    "--ids-file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="F",
    help="Document ids, one per line.",
)
@click.option("--all", "every", is_flag=True, help="Every live document of the store.")
@click.option("--topic", metavar="T", help="Publish here instead of where the router sends them.")
@click.option(
    "--type",
    "doc_type",
    metavar="T",
    help="Document type of the stubs (routes them; default: the document's doc_type/type).",
)
@click.pass_context
def republish_cmd(
    ctx: click.Context,
    store_name: str,
    doc_ids: tuple[str, ...],
    ids_file: Path | None,
    every: bool,
    topic: str | None,
    doc_type: str | None,
) -> None:
    """Publish fresh change stubs for documents from their store; every pillow reading the
    topic processes them again. Deleted documents get deletion stubs; ids the store does not
    know are reported and make the exit code 2 (the others are still published)."""
    if sum((bool(doc_ids), ids_file is not None, every)) != 1:
        raise UserError("give exactly one of --id, --ids-file or --all")
    if topic is not None:
        with user_errors():
            topic_name(topic)
    app = get_app(ctx)
    store = find_store(app, store_name)
    ids: Iterable[str]
    if every:
        ids = store.iter_document_ids()
    elif ids_file is not None:
        ids = read_ids(ids_file)
        if not ids:
            raise UserError(f"{ids_file} lists no ids")
    else:
        ids = doc_ids
    published = 0
    unknown: list[str] = []
    topics: Counter[str] = Counter()
    deletions: Counter[str] = Counter()
    for chunk in _chunks(dict.fromkeys(ids)):
        found = store.get_documents(chunk)
        metas: list[ChangeMeta] = []
        for doc_id in chunk:
            if doc_id not in found:
                unknown.append(doc_id)
                continue
            metas.append(stub_for(store, doc_id, found[doc_id], doc_type))
        if not metas:
            continue
        routed = [(topic or app.router.topic_for(m), m) for m in metas]
        app.publisher().publish_many(routed)
        topics.update(t for t, _ in routed)
        deletions.update(t for t, m in routed if m.is_deletion)
        published += len(metas)
    if published:
        app.publisher().flush()
    where = ", ".join(f"{escape(t)} ({n})" for t, n in sorted(topics.items())) or "-"
    click.echo(
        f"published {plural(published, 'stub')} from "
        f"{store.data_source_type}/{store.data_source_name} "
        f"({plural(deletions.total(), 'deletion')}) to {where}"
    )
    for t, n in sorted(deletions.items()):
        # A deleted document has no type to route it by: say where its stub went.
        how = (
            ""
            if topic or doc_type
            else " (a deleted document has no type: --type or --topic route it)"
        )
        click.echo(f"{plural(n, 'deletion')} went to {escape(t)}{how}")
    _warn_unread(app, set(topics))
    if unknown:
        shown = ", ".join(unknown[:10]) + (
            f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else ""
        )
        click.echo(
            f"changefeed: error: {plural(len(unknown), 'id')} unknown to the store: {shown}",
            err=True,
        )
        ctx.exit(2)


def _warn_unread(app: App, topics: set[str]) -> None:
    """Warn about each topic no pillow of the app reads: its stubs wait there for pillows
    of another deployment, if any, and this app will not process them."""
    read: set[str] = set()
    for name in app.pillow_names:
        try:
            pillow = app.get_pillow(name)
        except Exception:  # noqa: BLE001 - the stubs are published; only the warning is lost
            return
        read.update(pillow.change_feed.topics)
        pillow.change_feed.close()
    for t in sorted(topics - read):
        click.echo(
            f"changefeed: warning: no pillow of this app reads topic {escape(t)!r}: its stubs "
            "wait there for pillows elsewhere, if any",
            err=True,
        )
