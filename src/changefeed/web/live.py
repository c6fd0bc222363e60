"""Live changes: tail the log in a thread and fan each change out to dashboard clients.

One reader per dashboard process, however many browsers watch: the thread follows the log
from its head (``iter_changes(latest offsets, forever=True)``) and hands every change to each
subscriber's bounded asyncio queue. A slow client loses events (counted) instead of slowing
the reader or growing memory without bound.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from changefeed.backends.base import Backend, ChangeFeed
from changefeed.change import Change, TopicPartition
from changefeed.lifecycle import StopFlag
from changefeed.status import redacted

log = logging.getLogger("changefeed.web.live")


def change_event(change: Change) -> dict[str, Any]:
    """What the stream shows of a change: where it is in the log and its stub fields
    (credentials in any of them redacted, like every dashboard field)."""
    event: dict[str, Any] = {
        "topic": change.topic,
        "partition": change.partition,
        "offset": change.offset,
        "document_id": change.id,
        "received_at": time.time(),
    }
    if change.metadata is not None:
        stub = change.metadata.to_dict()
        stub.pop("v", None)
        event["stub"] = stub
    else:
        event["error"] = change.error
    return redacted(event)


@dataclass(eq=False)
class Subscription:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[dict[str, Any] | None]
    dropped: int = 0
    closed: bool = field(default=False)


class LiveChanges:
    """Follows ``topics`` (default: every topic in the log, re-listed while idle)."""

    def __init__(
        self,
        backend: Backend,
        topics: Sequence[str] | None = None,
        *,
        recent: int = 50,
        queue_size: int = 1000,
        idle_timeout: float = 0.5,
        refresh_topics: float = 5.0,
    ) -> None:
        self.backend = backend
        self.topics = list(topics) if topics else None
        self.recent: deque[dict[str, Any]] = deque(maxlen=recent)
        self.queue_size = queue_size
        self.idle_timeout = idle_timeout
        self.refresh_topics = refresh_topics
        self._subs: set[Subscription] = set()
        self._lock = threading.Lock()
        self._stop = StopFlag()
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()
        """Set once the reader is positioned at the head (changes published after it show)."""

    # -- subscribers (called from the event loop) ---------------------------------------

    def subscribe(self) -> Subscription:
        sub = Subscription(asyncio.get_running_loop(), asyncio.Queue(self.queue_size))
        with self._lock:
            self._subs.add(sub)
            backlog = list(self.recent)
        for event in backlog:
            sub.queue.put_nowait(event)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    # -- the reader thread -------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="changefeed-live", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            self._deliver(sub, None)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _broadcast(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.recent.append(event)
            subs = list(self._subs)
        for sub in subs:
            self._deliver(sub, event)

    def _deliver(self, sub: Subscription, event: dict[str, Any] | None) -> None:
        def put() -> None:
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                sub.dropped += 1

        try:
            sub.loop.call_soon_threadsafe(put)
        except RuntimeError:  # the client's loop is gone
            self.unsubscribe(sub)

    def _list_topics(self) -> list[str]:
        if self.topics is not None:
            return self.topics
        return sorted(t.name for t in self.backend.admin().list_topics())

    def _run(self) -> None:
        positions: dict[TopicPartition, int] = {}
        first = True
        while not self._stop.is_set():
            try:
                topics = self._list_topics()
                if not topics:
                    self.ready.set()
                    first = False
                    self._stop.sleep(self.refresh_topics)
                    continue
                feed = self.backend.change_feed(
                    topics, client_id="changefeed-dashboard", idle_timeout=self.idle_timeout
                )
                try:
                    self._follow(feed, topics, positions, first)
                finally:
                    feed.close()
                first = False
            except Exception as exc:  # noqa: BLE001 - keep the stream alive across log hiccups
                log.warning("live changes: %s: %s; retrying", type(exc).__name__, exc)
                self._stop.sleep(1.0)

    def _follow(
        self,
        feed: ChangeFeed,
        topics: list[str],
        positions: dict[TopicPartition, int],
        first: bool,
    ) -> None:
        heads = feed.latest_offsets()
        for tp in feed.topic_partitions():
            if tp not in positions:
                # At start: from the head. Partitions that appear later are new: from 0.
                positions[tp] = heads.get(tp, 0) if first else 0
        since = {tp: positions[tp] for tp in feed.topic_partitions()}
        self.ready.set()
        next_refresh = time.monotonic() + self.refresh_topics
        for change in feed.iter_changes(since, forever=True):
            if self._stop.is_set():
                return
            if change is None:
                if time.monotonic() >= next_refresh:
                    next_refresh = time.monotonic() + self.refresh_topics
                    if self._list_topics() != topics or len(feed.topic_partitions()) != len(since):
                        return  # re-open the feed on the new topics/partitions
                continue
            positions[TopicPartition(change.topic, change.partition)] = change.offset + 1
            self._broadcast(change_event(change))
