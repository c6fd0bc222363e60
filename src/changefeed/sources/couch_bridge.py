"""The Couch bridge: publish a CouchDB database's changes into the log as stubs.

``get_change_feed_pillow_for_db(app, db)`` (the name pillowtop users know) builds a
`CouchBridgePillow`: Couch ``_changes`` → classify each document into a `ChangeMeta` (doc
type, subtype, domain, deletion) → route to its topic with the app's router → publish →
checkpoint the seq. Documents that cannot be classified go to the error queue with the reason.

The bridge is its own small loop rather than a `Pillow` over an adapted feed: the pillow
runtime reads topic partitions at integer offsets and fetches documents, while ``_changes``
has one stream, opaque seqs and the documents inline. Inventing integer offsets for seqs
would make checkpoints meaningless to operators. The loop keeps the pillow's guarantees
(batch on size or max wait, publish before checkpoint: at least once, per-document order)
and its surface (``run``, ``stop``, ``bootstrap``, ``install_signal_handlers``, a checkpoint
row and ``change_feed.latest_offsets`` for ``changefeed status``), so ``changefeed run``
runs it like any pillow.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

import orjson

from changefeed.backends.base import Publisher
from changefeed.change import Change, ChangeMeta, TopicPartition
from changefeed.checkpoints import CheckpointStore
from changefeed.errors import ErrorQueue
from changefeed.identifiers import object_name
from changefeed.sources.couch import CouchChange, CouchChangeFeed, CouchDatabase, Seq
from changefeed.sources.seq_checkpoints import SeqCheckpoint, SeqCheckpointStore
from changefeed.stores.base import UnknownDocumentStoreError
from changefeed.stores.couch import CouchDocumentStore
from changefeed.topics import TopicRouter

if TYPE_CHECKING:
    from changefeed.app import App
    from changefeed.pillow import Pillow

log = logging.getLogger("changefeed.sources.couch_bridge")

CLASSIFY = "classify"
"""The pseudo processor name under which unclassifiable documents are queued."""


class UnclassifiableDocumentError(ValueError):
    """A document the classifier cannot turn into a stub (no type, wrong field types)."""


Classifier = Callable[[CouchChange, str], ChangeMeta]
"""``classify(change, data_source_name) -> ChangeMeta``; raises `UnclassifiableDocumentError`."""


@dataclass(frozen=True, slots=True)
class CouchDocumentClassifier:
    """The default classifier: doc type from the first of ``type_fields`` present, subtype
    and domain from their fields, deletion from ``_changes`` (or a soft-delete doc type
    ending in ``deleted_suffix``, as pillowtop's ``CommCareCase-Deleted``).

    A hard-deleted document's tombstone usually has no fields: its deletion is still
    published, with the type the tombstone carries or none (routed to the default topic).
    """

    type_fields: Sequence[str] = ("doc_type", "type")
    subtype_fields: Sequence[str] = ("subtype", "type_subtype")
    domain_field: str | None = "domain"
    deleted_suffix: str | None = "-Deleted"
    data_source_type: str = "couch"

    def __call__(self, change: CouchChange, data_source_name: str) -> ChangeMeta:
        doc = change.doc
        if doc is None and not change.deleted:
            raise UnclassifiableDocumentError("no document in the change (include_docs off?)")
        doc = doc or {}
        doc_type = self._first(doc, self.type_fields, "type")
        is_deletion = change.deleted
        if doc_type is None and not is_deletion:
            fields = " or ".join(repr(f) for f in self.type_fields)
            raise UnclassifiableDocumentError(f"document has no {fields} field")
        suffix = self.deleted_suffix
        if doc_type is not None and suffix and doc_type.endswith(suffix):
            doc_type = doc_type[: -len(suffix)] or None
            is_deletion = True
        domain = None
        if self.domain_field is not None:
            domain = doc.get(self.domain_field)
            if domain is not None and not isinstance(domain, str):
                raise UnclassifiableDocumentError(
                    f"{self.domain_field!r} must be a string, got {type(domain).__name__}"
                )
        return ChangeMeta(
            change.id,
            self.data_source_type,
            data_source_name,
            document_type=doc_type,
            document_subtype=self._first(doc, self.subtype_fields, "subtype"),
            domain=domain or None,
            is_deletion=is_deletion,
            document_rev=change.rev,
        )

    @staticmethod
    def _first(doc: dict[str, Any], fields: Sequence[str], what: str) -> str | None:
        for name in fields:
            value = doc.get(name)
            if value is None:
                continue
            if not isinstance(value, str) or not value:
                raise UnclassifiableDocumentError(
                    f"{what} field {name!r} must be a non-empty string, got {value!r}"
                )
            return value
        return None


@dataclass(frozen=True, slots=True)
class BridgeStep:
    """Names the bridge's steps where pillows list their processors."""

    name: str


class BridgeFeedView:
    """What ``changefeed pillows``/``status`` read from a pillow's ``change_feed``: the
    source as one pseudo partition whose head is the checkpoint plus the pending changes."""

    def __init__(self, bridge: CouchBridgePillow) -> None:
        self._bridge = bridge
        self.topics = (bridge.topic,)

    def topic_partitions(self) -> list[TopicPartition]:
        return [TopicPartition(self._bridge.topic, 0)]

    def earliest_offsets(self) -> dict[TopicPartition, int]:
        """0: a checkpoint reset to it replays the database from the start."""
        return {TopicPartition(self._bridge.topic, 0): 0}

    def latest_offsets(self) -> dict[TopicPartition, int]:
        saved = self._bridge.checkpoint
        pending = self._bridge.feed.pending(saved.seq if saved else None)
        position = saved.position if saved else 0
        return {TopicPartition(self._bridge.topic, 0): position + (pending or 0)}

    def close(self) -> None:
        self._bridge.feed.close()


class CouchBridgePillow:
    """Publishes one CouchDB database's changes as stubs, checkpointed by seq."""

    def __init__(
        self,
        name: str,
        feed: CouchChangeFeed,
        publisher: Publisher,
        *,
        checkpoints: CheckpointStore,
        error_queue: ErrorQueue | None = None,
        router: TopicRouter | None = None,
        classifier: Classifier | None = None,
        data_source_name: str | None = None,
        batch_size: int = 1000,
        max_wait: float = 0.2,
        skip_design_docs: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.name = object_name(name, "pillow name")
        self.feed = feed
        self.publisher = publisher
        self.checkpoints = checkpoints
        self.seq_checkpoints = SeqCheckpointStore(checkpoints)
        self.error_queue = error_queue or ErrorQueue(checkpoints.engine)
        self.router = router or TopicRouter()
        self.classifier: Classifier = classifier or CouchDocumentClassifier()
        self.data_source_name = data_source_name or feed.db.name
        self.topic = feed.topics[0]
        self.batch_size = batch_size
        self.max_wait = max_wait
        self.skip_design_docs = skip_design_docs
        self.processors = (BridgeStep(CLASSIFY), BridgeStep("publish"))
        self.change_feed = BridgeFeedView(self)
        self.published = 0
        self.unclassifiable = 0
        self._batch: dict[str, tuple[str, ChangeMeta]] = {}
        self._failures: list[tuple[Change, str, BaseException]] = []
        self._seen = 0
        self._seq: Seq = None
        self._position = 0
        self._stopping = False

    # -- lifecycle, as a pillow --------------------------------------------------------

    def bootstrap(self) -> None:
        """Create the checkpoint tables."""
        self.seq_checkpoints.create()

    @property
    def checkpoint(self) -> SeqCheckpoint | None:
        return self.seq_checkpoints.get(self.name)

    def stop(self) -> None:
        """Stop after the batch in hand (thread- and signal-safe)."""
        self._stopping = True
        self.feed.stop()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info(
                "couch bridge %s: signal %s, stopping after the current batch", self.name, signum
            )
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    # -- the loop ----------------------------------------------------------------------

    def run(self, *, forever: bool = True, num_processes: int = 1, process_number: int = 0) -> int:
        """Publish changes until stopped (or, without ``forever``, until caught up).
        Returns the number of changes read."""
        if num_processes != 1 or process_number != 0:
            raise ValueError(
                f"couch bridge {self.name} reads one _changes stream: run it as one process"
            )
        self._stopping = False
        saved = self.checkpoint
        self._seq = saved.seq if saved else None
        self._position = saved.position if saved else 0
        total = 0
        started = 0.0
        monotonic = time.monotonic
        for change in self.feed.iter_changes(self._seq, forever):
            if change is not None:
                total += 1
                if self._seen == 0:
                    started = monotonic()
                self._add(change)
                if (
                    self._seen < self.batch_size
                    and monotonic() - started < self.max_wait
                    and not self._stopping
                ):
                    continue
            if self._seen:
                self.flush()
            if self._stopping:
                break
        if self._seen:
            self.flush()
        return total

    def _add(self, change: CouchChange) -> None:
        self._seen += 1
        self._position += 1
        self._seq = change.seq
        if self.skip_design_docs and change.id.startswith("_design/"):
            return
        try:
            meta = self.classifier(change, self.data_source_name)
        except (UnclassifiableDocumentError, ValueError) as exc:
            self._failures.append((self._error_change(change, str(exc)), CLASSIFY, exc))
            return
        batch = self._batch
        batch.pop(change.id, None)  # only the newest stub per document in a batch
        batch[change.id] = (self.router.topic_for(meta), meta)

    def _error_change(self, change: CouchChange, reason: str) -> Change:
        return Change(
            self.topic,
            0,
            self._position - 1,
            None,
            raw=orjson.dumps(change.to_dict()),
            error=reason,
            document_id=change.id,
        )

    def flush(self) -> None:
        """Publish the batch, queue its unclassifiable documents, then checkpoint its seq."""
        if self._batch:
            self.publisher.publish_many(self._batch.values())
            self.publisher.flush()
            self.published += len(self._batch)
        if self._failures:
            for change, _, exc in self._failures:
                log.warning("couch bridge %s: cannot classify %s: %s", self.name, change.id, exc)
            self.error_queue.add_many(self.name, self._failures, retryable=False)
            self.unclassifiable += len(self._failures)
        self.seq_checkpoints.commit(self.name, self.topic, self._seq, self._position)
        self._batch.clear()
        self._failures.clear()
        self._seen = 0

    def retry_errors(self, limit: int = 500) -> tuple[int, int]:
        """Classify queued documents again (after fixing the classifier or the documents,
        read afresh from CouchDB); publish those that now pass. Returns (published, failed)."""
        store = CouchDocumentStore(self.feed.db)
        ok = failed = 0
        try:
            for record in self.error_queue.list(self.name, limit=limit):
                row = orjson.loads(record.stub)
                found = store.get_documents([record.document_id]).get(record.document_id)
                doc = found if isinstance(found, dict) else row.get("doc")
                change = CouchChange(
                    row["seq"],
                    record.document_id,
                    doc.get("_rev") if doc else row.get("rev"),
                    not isinstance(found, dict) and found is not None,
                    doc,
                )
                try:
                    meta = self.classifier(change, self.data_source_name)
                except (UnclassifiableDocumentError, ValueError) as exc:
                    self.error_queue.record_failure(record, exc)
                    failed += 1
                    continue
                self.publisher.publish(self.router.topic_for(meta), meta)
                self.publisher.flush()
                self.error_queue.resolve(record.id)
                ok += 1
        finally:
            store.close()
        return ok, failed

    def close(self) -> None:
        self.feed.close()


_NOT_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def get_change_feed_pillow_for_db(
    app: App,
    db_url_or_name: str,
    *,
    couch_url: str | None = None,
    name: str | None = None,
    classifier: Classifier | None = None,
    batch_size: int = 1000,
    max_wait: float = 0.2,
    register_store: bool = True,
    **feed_options: Any,
) -> CouchBridgePillow:
    """The bridge pillow publishing a CouchDB database's changes into ``app``'s log.

    ``db_url_or_name`` is a database URL, or a name on ``couch_url`` (default: the
    ``CHANGEFEED_COUCH_URL`` environment variable). The pillow is named
    ``couch-bridge-<db>`` unless ``name`` is given. With ``register_store`` the database is
    also registered as the app's document store for its stubs (type ``couch``).
    ``feed_options`` go to `CouchChangeFeed` (heartbeat, read_timeout, backoff, ...).
    """
    if "://" in db_url_or_name:
        db = CouchDatabase(db_url_or_name)
    else:
        server = couch_url or os.environ.get("CHANGEFEED_COUCH_URL")
        if not server:
            raise ValueError(
                f"database {db_url_or_name!r} given by name: pass couch_url or set "
                "CHANGEFEED_COUCH_URL"
            )
        db = CouchDatabase(server, db_url_or_name)
    pillow_name = name or f"couch-bridge-{_NOT_NAME.sub('_', db.name)}"
    if register_store:
        try:
            app.document_stores.get("couch", db.name)
        except UnknownDocumentStoreError:
            app.document_stores.register(CouchDocumentStore(db))
    return CouchBridgePillow(
        pillow_name,
        CouchChangeFeed(db, **feed_options),
        app.publisher(),
        checkpoints=app.checkpoints,
        error_queue=app.error_queue,
        router=app.router,
        classifier=classifier,
        batch_size=batch_size,
        max_wait=max_wait,
    )


def add_couch_bridge(app: App, db_url_or_name: str, **options: Any) -> str:
    """Register the bridge for a database as one of ``app``'s pillows, so ``changefeed run``
    and ``status`` know it. Returns the pillow name."""

    def factory(app: App) -> CouchBridgePillow:
        return get_change_feed_pillow_for_db(app, db_url_or_name, **options)

    db = CouchDatabase(db_url_or_name) if "://" in db_url_or_name else None
    db_name = db.name if db else db_url_or_name
    name = options.get("name") or f"couch-bridge-{_NOT_NAME.sub('_', db_name)}"
    app.add_pillow(name, cast("Callable[[App], Pillow]", factory))
    return name
