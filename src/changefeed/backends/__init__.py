"""Log backends behind one interface, chosen by URL: ``sqlite:///path`` or ``kafka://hosts``."""

from __future__ import annotations

import importlib

from changefeed.backends.base import (
    MAX_PARTITIONS,
    Backend,
    ChangeFeed,
    CreatedTopic,
    FeedOptionError,
    FeedOptions,
    LogUnavailableError,
    OffsetOutOfRangeError,
    Publisher,
    PublishError,
    TopicAdmin,
    TopicInfo,
    UnknownTopicError,
    partition_count,
)
from changefeed.identifiers import redact_url

_SCHEMES = {
    "sqlite": "changefeed.backends.local:SQLiteLog",
    "kafka": "changefeed.backends.kafka:KafkaBackend",
}


class BackendURLError(ValueError):
    """A log URL with an unknown scheme or bad options."""


def open_backend(url: str, *, create: bool = True) -> Backend:
    """The backend for a log URL (``sqlite:///changefeed.db``, ``kafka://host:9092``);
    ``create=False``: a log that does not exist yet is read as empty, and nothing is made."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise BackendURLError(
            f"unsupported log URL {redact_url(url)!r}: use sqlite:///path or kafka://host:port[,host:port]"
        )
    module, _, attr = _SCHEMES[scheme].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    try:
        backend: Backend = cls.from_url(url, create=create)
    except ValueError as exc:
        raise BackendURLError(redact_url(str(exc))) from None
    return backend


__all__ = [
    "MAX_PARTITIONS",
    "Backend",
    "BackendURLError",
    "ChangeFeed",
    "CreatedTopic",
    "FeedOptionError",
    "FeedOptions",
    "LogUnavailableError",
    "OffsetOutOfRangeError",
    "PublishError",
    "Publisher",
    "TopicAdmin",
    "TopicInfo",
    "UnknownTopicError",
    "open_backend",
    "partition_count",
]
