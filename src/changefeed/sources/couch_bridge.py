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
and is a ``changefeed.runner.Runnable`` (``scalable = False``: one stream), registered with
``app.add_runnable``, so ``changefeed run`` and the supervisor run it like any pillow. For
``changefeed status`` it keeps a checkpoint row for the pseudo partition ``(couch:<db>, 0)``
(offset = changes read) and reports, in `CouchBridgePillow.health`, that checkpoint, the
source's head and the lag; `latest_offsets`/`earliest_offsets` give the same positions to
``changefeed checkpoint``.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

import orjson

from changefeed.backends.base import Publisher
from changefeed.change import Change, ChangeMeta, TopicPartition
from changefeed.checkpoints import CheckpointStore, SeqCheckpoint, partition_lag
from changefeed.couchdb import CouchDatabase
from changefeed.errors import ErrorQueue
from changefeed.failures import Failure
from changefeed.identifiers import object_name
from changefeed.lifecycle import Health
from changefeed.sources.couch import CouchChange, CouchChangeFeed, Seq
from changefeed.sources.couch_classifier import (
    CLASSIFY,
    Classifier,
    CouchDocumentClassifier,
    UnclassifiableDocumentError,
)
from changefeed.sources.host import SourceHost, check_one_process
from changefeed.stores.base import UnknownDocumentStoreError
from changefeed.stores.couch import CouchDocumentStore
from changefeed.topics import TopicRouter

__all__ = [
    "CLASSIFY",
    "Classifier",
    "CouchBridgePillow",
    "CouchDocumentClassifier",
    "UnclassifiableDocumentError",
    "add_couch_bridge",
    "get_change_feed_pillow_for_db",
]

log = logging.getLogger("changefeed.sources.couch_bridge")


class CouchBridgePillow:
    """Publishes one CouchDB database's changes as stubs, checkpointed by seq.

    A runnable, not a `Pillow` (see the module docs); the name is the one pillowtop users
    know from ``get_change_feed_pillow_for_db``.
    """

    kind = "couch-bridge"
    scalable = False
    """One ``_changes`` stream: it cannot be split across processes."""

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
        self.error_queue = error_queue or ErrorQueue(checkpoints.engine)
        self.router = router or TopicRouter()
        self.classifier: Classifier = classifier or CouchDocumentClassifier()
        self.data_source_name = data_source_name or feed.db.name
        self.topic = feed.topics[0]
        self._tp = TopicPartition(self.topic, 0)
        self.batch_size = batch_size
        self.max_wait = max_wait
        self.skip_design_docs = skip_design_docs
        self.published = 0
        self.unclassifiable = 0
        self.read = 0
        """Changes read by this object's runs (all of them, design documents included)."""
        self._batch: dict[str, tuple[str, ChangeMeta]] = {}
        self._failures: list[Failure] = []
        self._seen = 0
        self._seq: Seq = None
        self._position = 0
        self._stopping = False
        self._state = "idle"
        self._last_progress_at: float | None = None

    # -- Runnable ----------------------------------------------------------------------

    def bootstrap(self) -> None:
        """Create the checkpoint tables."""
        self.checkpoints.create()

    @property
    def checkpoint(self) -> SeqCheckpoint[Seq] | None:
        """The saved seq (stored JSON-encoded: an int stays an int, a string a string) and the
        changes read up to it; None when never saved or reset to 0 by an operator."""
        saved = self.checkpoints.get_seq(self.name, self._tp)
        if saved is None:
            return None
        return SeqCheckpoint(saved.tp, orjson.loads(saved.seq), saved.position, saved.updated_at)

    def stop(self) -> None:
        """Stop after the batch in hand (thread- and signal-safe)."""
        self._stopping = True
        self.feed.stop()

    # -- the loop ----------------------------------------------------------------------

    def run(self, *, forever: bool = True, num_processes: int = 1, process_number: int = 0) -> int:
        """Publish changes until stopped (or, without ``forever``, until caught up).
        Returns the number of changes read."""
        check_one_process(f"couch bridge {self.name}", num_processes, process_number)
        self._stopping = False
        self._state = "running"
        self._reseek = False
        try:
            total = self._run(forever)
            while self._reseek and not self.feed.stopped:  # not stopped by `stop`
                # An operator moved the checkpoint (`flush`): read on from their seq.
                self._reseek = self._stopping = False
                total += self._run(forever)
            return total
        finally:
            self._state = "stopped"

    def _run(self, forever: bool) -> int:
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
        self.read += 1
        self._seen += 1
        self._position += 1
        self._seq = change.seq
        if self.skip_design_docs and change.id.startswith("_design/"):
            return
        try:
            meta = self.classifier(change, self.data_source_name)
        except ValueError as exc:  # UnclassifiableDocumentError is one
            self._failures.append(
                Failure(self._error_change(change, str(exc)), exc, False, CLASSIFY)
            )
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
            for change, exc, _, _ in self._failures:
                log.warning("couch bridge %s: cannot classify %s: %s", self.name, change.id, exc)
            self.error_queue.add_many(self.name, self._failures)
            self.unclassifiable += len(self._failures)
        tp = TopicPartition(self.topic, 0)
        moved = self.checkpoints.moved(self.name, {tp: self._position - self._seen})
        if moved.get(tp) == 0:
            # Someone reset the checkpoint while we ran (`checkpoint reset` to replay the
            # database): keep their value and read again from the start (`run`).
            log.warning("couch bridge %s: checkpoint reset by someone else; replaying", self.name)
            self._reseek = self._stopping = True
        else:
            if moved:  # a seq cannot be derived from a count: only a reset can be honoured
                log.warning(
                    "couch bridge %s: checkpoint set to %s by someone else ignored: only a "
                    "reset to 0 can move a Couch bridge",
                    self.name,
                    moved[tp],
                )
            seq = orjson.dumps(self._seq).decode()
            self.checkpoints.commit_seq(self.name, tp, seq, self._position)
        self._last_progress_at = time.time()
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
                except ValueError as exc:  # UnclassifiableDocumentError is one
                    self.error_queue.record_failure(record, exc, retryable=False)
                    failed += 1
                    continue
                self.publisher.publish(self.router.topic_for(meta), meta)
                self.publisher.flush()
                self.error_queue.resolve(record.id)
                ok += 1
        finally:
            store.close()
        return ok, failed

    # -- where it stands: for ``changefeed status`` and ``changefeed checkpoint`` -------

    @property
    def topics(self) -> tuple[str, ...]:
        """The pseudo topic the checkpoint row is kept under (``couch:<db>``)."""
        return (self.topic,)

    def topic_partitions(self) -> list[TopicPartition]:
        """The source as one pseudo partition."""
        return [TopicPartition(self.topic, 0)]

    def earliest_offsets(self) -> dict[TopicPartition, int]:
        """0: a checkpoint reset to it replays the database from the start."""
        return {TopicPartition(self.topic, 0): 0}

    def pending(self) -> int | None:
        """Changes after the saved seq, asked from CouchDB (None: the server cannot tell)."""
        saved = self.checkpoint
        return self.feed.pending(saved.seq if saved else None)

    def latest_offsets(self) -> dict[TopicPartition, int]:
        """The head of the pseudo partition: changes read so far plus those pending."""
        saved = self.checkpoint
        position = saved.position if saved else 0
        pending = self.feed.pending(saved.seq if saved else None)
        return {TopicPartition(self.topic, 0): position + (pending or 0)}

    def health(self) -> Health:
        """State and counters of this object, plus what is durable: the saved seq and its
        checkpoint row, the head and lag (one request to CouchDB; when that fails, ``lag``
        is None and ``error`` says why) and the error queue's counts. ``partitions`` has the
        shape of a pillow's status partitions."""
        now = time.time()
        saved = self.checkpoint
        error: str | None = None
        try:
            head: int | None = self.latest_offsets()[TopicPartition(self.topic, 0)]
        except Exception as exc:  # noqa: BLE001 - reported, a health check must not raise
            head, error = None, f"lag unknown: {type(exc).__name__}: {exc}"
        checkpoint = saved.position if saved else None
        position = {
            "topic": self.topic,
            "partition": 0,
            "checkpoint": checkpoint,
            "head": head,
            "lag": None if head is None else partition_lag(head, checkpoint),
            "checkpoint_age": None if saved is None else max(0.0, now - saved.updated_at),
        }
        counts = self.error_queue.counts(self.name)
        return Health(
            self.name,
            self.kind,
            state=self._state,
            processed=self.read,
            last_progress_at=self._last_progress_at,
            error=error,
            detail={
                **position,
                "seq": saved.seq if saved else None,
                "partitions": [position],
                "published": self.published,
                "unclassifiable": self.unclassifiable,
                "errors_pending": counts.get("pending", 0),
                "errors_parked": counts.get("parked", 0),
            },
        )

    def close(self) -> None:
        self.feed.close()


_NOT_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def get_change_feed_pillow_for_db(
    app: SourceHost,
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


def add_couch_bridge(app: SourceHost, db_url_or_name: str, **options: Any) -> str:
    """Register the bridge for a database as one of ``app``'s runnables, so ``changefeed
    run``, ``run --all``, the supervisor and ``status`` know it. ``options`` go to
    `get_change_feed_pillow_for_db`. Returns the bridge's name."""

    def factory(host: SourceHost) -> CouchBridgePillow:
        return get_change_feed_pillow_for_db(host, db_url_or_name, **options)

    db = CouchDatabase(db_url_or_name) if "://" in db_url_or_name else None
    server = options.get("couch_url") or os.environ.get("CHANGEFEED_COUCH_URL")
    if db is None and server:
        db = CouchDatabase(server, db_url_or_name)
    db_name = db.name if db else db_url_or_name
    name = options.get("name") or f"couch-bridge-{_NOT_NAME.sub('_', db_name)}"
    app.add_runnable(name, factory)
    if db is not None and options.get("register_store", True):
        # Part of the app's configuration, not of building the bridge: a downstream pillow
        # run in its own process reads these documents without ever building the bridge.
        try:
            app.document_stores.get("couch", db.name)
        except UnknownDocumentStoreError:
            app.document_stores.register(CouchDocumentStore(db))
    return name
