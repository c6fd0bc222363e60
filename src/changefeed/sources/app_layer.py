"""Publishing from the application layer: the code that writes a row also publishes its stub.

`publish_change` works anywhere. `SessionPublisher` hooks SQLAlchemy ORM sessions:
``after_flush`` collects a stub per changed object of a registered model, the commit of the
outermost transaction publishes them and a rollback discards them, so nothing is published
for data that was never committed. Savepoints (``begin_nested``) are followed: a rolled-back
savepoint discards only the stubs of what was flushed inside it.

The weakness is built in: commit and publish are two steps. A process killed (or a log that
is down) between them loses the stub while the row stays committed. Use the transactional
outbox or PostgreSQL CDC where that matters; this is the simple option for everything else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from changefeed.backends.base import Publisher
from changefeed.change import ChangeMeta
from changefeed.sources.host import PublishingHost
from changefeed.topics import TopicRouter

log = logging.getLogger("changefeed.sources.app_layer")

_PENDING = "changefeed_pending_stubs"

_Flushed = tuple[tuple[Any, ...], ChangeMeta]
"""A stub and the savepoints open when it was flushed (innermost first)."""


def _open_savepoints(session: Session) -> tuple[Any, ...]:
    """The savepoints (nested transactions) open in ``session``, innermost first. Kept as
    objects, not ids, so a later savepoint can never be mistaken for an ended one."""
    out = []
    transaction = session.get_nested_transaction()
    while transaction is not None:
        if transaction.nested:
            out.append(transaction)
        transaction = transaction.parent
    return tuple(out)


def publish_change(
    target: PublishingHost | Publisher,
    meta: ChangeMeta,
    *,
    topic: str | None = None,
    router: TopicRouter | None = None,
) -> str:
    """Publish one stub to its topic (routed by document type unless ``topic`` is given),
    through an `App` or a bare `Publisher`. Returns the topic. Call it after your commit."""
    if isinstance(target, Publisher):
        chosen = topic or (router or TopicRouter()).topic_for(meta)
        target.publish(chosen, meta)
        target.flush()
        return chosen
    chosen = topic or (router or target.router).topic_for(meta)
    target.publish(meta, chosen)
    return chosen


def publish_changes(
    target: PublishingHost | Publisher,
    metas: list[ChangeMeta],
    *,
    router: TopicRouter | None = None,
) -> None:
    """Publish several stubs in one round trip."""
    if not metas:
        return
    if isinstance(target, Publisher):
        topic_for = (router or TopicRouter()).topic_for
        target.publish_many((topic_for(m), m) for m in metas)
        target.flush()
    else:
        topic_for = (router or target.router).topic_for
        target.publisher().publish_many((topic_for(m), m) for m in metas)


Attr = str | Callable[[Any], Any] | None
"""An attribute name, a function of the object, or None (not used)."""


def _read(obj: object, attr: Attr) -> Any:
    if attr is None:
        return None
    if callable(attr):
        return attr(obj)
    return getattr(obj, attr)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """How objects of one mapped class become stubs."""

    model: type
    document_type: str | Callable[[Any], str]
    data_source_name: str
    data_source_type: str = "sql"
    id_attr: Attr = "id"
    domain_attr: Attr = None
    version_attr: Attr = None
    subtype_attr: Attr = None

    def stub(self, obj: object, *, deleted: bool = False) -> ChangeMeta:
        doc_id = _read(obj, self.id_attr)
        if doc_id is None:
            raise ValueError(f"{type(obj).__name__} has no id yet ({self.id_attr!r} is None)")
        doc_type = self.document_type(obj) if callable(self.document_type) else self.document_type
        version = _read(obj, self.version_attr)
        domain = _read(obj, self.domain_attr)
        subtype = _read(obj, self.subtype_attr)
        return ChangeMeta(
            str(doc_id),
            self.data_source_type,
            self.data_source_name,
            document_type=doc_type,
            document_subtype=None if subtype is None else str(subtype),
            domain=None if domain is None else str(domain),
            is_deletion=deleted,
            version=None if version is None else int(version),
        )


class SessionPublisher:
    """Publishes stubs for registered models after SQLAlchemy sessions commit.

    ``target`` is an `App` or a `Publisher`. Publish errors after a commit cannot undo it:
    they go to ``on_error(exc, stubs)`` (default: logged as an error with the ids).
    Stubs are collected from the unit of work: ``session.add``/``delete`` and changed
    attributes. Bulk statements (``session.execute(update(...))``) bypass it; publish those
    with `publish_change` yourself. Stubs flushed inside a savepoint wait for the outermost
    commit like the others; rolling the savepoint back discards them (and only them).
    """

    def __init__(
        self,
        target: PublishingHost | Publisher,
        *,
        router: TopicRouter | None = None,
        on_error: Callable[[Exception, list[ChangeMeta]], None] | None = None,
    ) -> None:
        self.target = target
        self.router = router
        self.on_error = on_error or self._log_error
        self._specs: dict[type, ModelSpec] = {}
        self._installed: list[Any] = []

    def register(
        self,
        model: type,
        document_type: str | Callable[[Any], str],
        *,
        id_attr: Attr = "id",
        domain_attr: Attr = None,
        version_attr: Attr = None,
        subtype_attr: Attr = None,
        data_source_name: str | None = None,
        data_source_type: str = "sql",
    ) -> ModelSpec:
        """Publish stubs for ``model`` (and its subclasses); ``data_source_name`` defaults to
        its table name, so it matches a `SQLDocumentStore` on that table."""
        name = data_source_name or getattr(model, "__tablename__", None) or model.__name__
        spec = ModelSpec(
            model,
            document_type,
            name,
            data_source_type,
            id_attr,
            domain_attr,
            version_attr,
            subtype_attr,
        )
        self._specs[model] = spec
        return spec

    def spec_for(self, obj: object) -> ModelSpec | None:
        for cls in type(obj).__mro__:
            spec = self._specs.get(cls)
            if spec is not None:
                return spec
        return None

    # -- installing the session hooks --------------------------------------------------

    def install(self, target: Session | sessionmaker[Any] | type[Session]) -> None:
        """Listen on a session, a sessionmaker or a Session class."""
        event.listen(target, "after_flush", self._after_flush)
        event.listen(target, "after_commit", self._after_commit)
        event.listen(target, "after_rollback", self._after_rollback)
        self._installed.append(target)

    def uninstall(self) -> None:
        for target in self._installed:
            event.remove(target, "after_flush", self._after_flush)
            event.remove(target, "after_commit", self._after_commit)
            event.remove(target, "after_rollback", self._after_rollback)
        self._installed.clear()

    def _after_flush(self, session: Session, _flush_context: Any) -> None:
        pending: dict[tuple[str, str, str], list[_Flushed]] = session.info.setdefault(_PENDING, {})
        savepoints = _open_savepoints(session)
        for objects, deleted in (
            (session.new, False),
            (session.dirty, False),
            (session.deleted, True),
        ):
            for obj in objects:
                spec = self.spec_for(obj)
                if spec is None:
                    continue
                if not deleted and obj in session.dirty and not session.is_modified(obj):
                    continue
                meta = spec.stub(obj, deleted=deleted)
                key = (meta.data_source_type, meta.data_source_name, meta.document_id)
                flushed = pending.pop(key, [])  # re-inserted: stubs go out in last-change order
                if flushed and flushed[-1][0] == savepoints:
                    flushed[-1] = (savepoints, meta)  # same savepoints: only the newest counts
                else:
                    flushed.append((savepoints, meta))
                pending[key] = flushed

    def _after_commit(self, session: Session) -> None:
        if session.in_nested_transaction():
            return  # a savepoint was released: its stubs wait for the outermost commit
        pending: dict[Any, list[_Flushed]] | None = session.info.pop(_PENDING, None)
        if not pending:
            return
        stubs = [flushed[-1][1] for flushed in pending.values()]
        try:
            publish_changes(self.target, stubs, router=self.router)
        except Exception as exc:  # noqa: BLE001 - the commit stands; report, do not raise
            self.on_error(exc, stubs)

    def _after_rollback(self, session: Session) -> None:
        savepoint = session.get_nested_transaction() if session.in_nested_transaction() else None
        if savepoint is None:
            session.info.pop(_PENDING, None)
            return
        # Only what was flushed inside this savepoint (or savepoints within it) is undone.
        pending: dict[Any, list[_Flushed]] = session.info.get(_PENDING, {})
        for key in list(pending):
            kept = [f for f in pending[key] if not any(sp is savepoint for sp in f[0])]
            if kept:
                pending[key] = kept
            else:
                del pending[key]

    @staticmethod
    def _log_error(exc: Exception, stubs: list[ChangeMeta]) -> None:
        ids = ", ".join(m.document_id for m in stubs[:20])
        log.error(
            "committed but not published (%d stubs: %s): %s: %s",
            len(stubs),
            ids,
            type(exc).__name__,
            exc,
        )
