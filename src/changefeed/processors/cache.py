"""Cache invalidation on Redis: drop (or refresh) the keys that depend on a changed document.

Keys are named by templates such as ``case:{document_id}`` or ``domain:{domain}:cases``,
filled from the stub's fields, or from the document's with ``{doc.owner_id}`` (dotted paths
reach nested fields). A whole batch goes to Redis as one pipeline. Deleting is always safe
to repeat, so replays are harmless; a refresh function instead computes each key's new value.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from typing import Any

from changefeed.clock import SYSTEM_CLOCK, Clock
from changefeed.extras import MissingExtraError

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ReadOnlyError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from redis.retry import Retry
except ImportError as exc:
    raise MissingExtraError("redis", exc) from exc

from changefeed.change import Change
from changefeed.processors.backoff import Backoff, SinkRetrier
from changefeed.processors.base import BulkProcessor, ChangeFailure

Value = bytes | str | int | float
Refresh = Callable[[str, Change], "Value | None"]
"""``refresh(key, change)``: the key's new value, or None to delete it."""

STUB_FIELDS = (
    "document_id",
    "data_source_type",
    "data_source_name",
    "document_type",
    "document_subtype",
    "domain",
    "document_rev",
    "version",
)
DOC_PREFIX = "doc."
_DEL_CHUNK = 500


class KeyTemplate:
    """A compiled key template; `render` is None when a field it needs has no value."""

    def __init__(self, template: str) -> None:
        if not isinstance(template, str) or not template:
            raise ValueError(f"key template must be a non-empty string, got {template!r}")
        self.template = template
        self.parts: list[str | tuple[bool, tuple[str, ...]]] = []
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise ValueError(f"key template {template!r}: {exc}") from None
        for literal, field, spec, conversion in parsed:
            if literal:
                self.parts.append(literal)
            if field is None:
                continue
            if spec or conversion:
                raise ValueError(
                    f"key template {template!r}: no format specs or conversions, just {{{field}}}"
                )
            if field in STUB_FIELDS:
                self.parts.append((False, (field,)))
            elif field.startswith(DOC_PREFIX) and all(field[len(DOC_PREFIX) :].split(".")):
                self.parts.append((True, tuple(field[len(DOC_PREFIX) :].split("."))))
            else:
                raise ValueError(
                    f"key template {template!r}: unknown field {{{field}}}; use a stub field "
                    f"({', '.join(STUB_FIELDS)}) or a document field as {{doc.NAME}}"
                )
        self.uses_document = any(isinstance(p, tuple) and p[0] for p in self.parts)

    def render(self, change: Change) -> str | None:
        out: list[str] = []
        meta = change.metadata
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            from_doc, path = part
            value: Any = change.document if from_doc else meta
            if from_doc:
                for name in path:
                    value = value.get(name) if isinstance(value, dict) else None
            else:
                value = getattr(value, path[0], None)
            if value is None or value == "":
                return None
            out.append(str(value))
        return "".join(out)

    def __repr__(self) -> str:
        return f"KeyTemplate({self.template!r})"


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, RedisConnectionError | RedisTimeoutError | ReadOnlyError)


class CacheInvalidationProcessor(BulkProcessor):
    """Deletes (or, with ``refresh``, rewrites) the cache keys of every changed document.

    Documents are fetched only when a template reads document fields or ``refresh`` is
    given. Refreshed values are written with ``ttl`` seconds to live when set. For Redis
    Cluster pass a ``redis.RedisCluster`` client, or a URL with ``cluster=True``: keys of one
    batch may live on different nodes, so they are deleted one command a key (still one
    pipeline).
    """

    def __init__(
        self,
        client: redis.Redis | redis.RedisCluster | str,
        keys: Sequence[str],
        *,
        refresh: Refresh | None = None,
        ttl: int | None = None,
        backoff: Backoff | None = None,
        clock: Clock = SYSTEM_CLOCK,
        name: str | None = None,
        cluster: bool = False,
    ) -> None:
        if isinstance(keys, str):
            keys = [keys]
        if not keys:
            raise ValueError("a cache invalidation processor needs at least one key template")
        self.templates = [KeyTemplate(k) for k in keys]
        if ttl is not None and ttl < 1:
            raise ValueError("ttl must be at least 1 second")
        self._owns_client = isinstance(client, str)
        # Our own backoff retries; a client we make fails fast instead of retrying inside.
        self.client: redis.Redis | redis.RedisCluster
        if not isinstance(client, str):
            self.client = client
        elif cluster:
            self.client = redis.RedisCluster.from_url(
                client, retry=Retry(NoBackoff(), 0), socket_timeout=10, socket_connect_timeout=5
            )
        else:
            self.client = redis.Redis.from_url(
                client, retry=Retry(NoBackoff(), 0), socket_timeout=10, socket_connect_timeout=5
            )
        self._one_key_per_delete = isinstance(self.client, redis.RedisCluster)
        self.refresh = refresh
        self.ttl = ttl
        self.needs_documents = refresh is not None or any(t.uses_document for t in self.templates)
        self._name = name or "cache"
        self._retrier = SinkRetrier(self._name, backoff, clock)

    @property
    def name(self) -> str:
        return self._name

    def keys_for(self, change: Change) -> list[str]:
        """The cache keys a change touches (templates whose fields all have values)."""
        return [key for t in self.templates if (key := t.render(change)) is not None]

    def process_changes(self, changes: Sequence[Change]) -> list[ChangeFailure]:
        self._retrier.begin_batch()
        failures: list[ChangeFailure] = []
        plan: dict[str, Value | None] = {}  # key -> new value (None: delete); last change wins
        refresh = self.refresh
        for change in changes:
            try:
                keys = self.keys_for(change)
                if refresh is None:
                    plan.update(dict.fromkeys(keys))
                else:
                    plan.update({key: refresh(key, change) for key in keys})
            except Exception as exc:  # noqa: BLE001 - one bad change fails alone
                failures.append(ChangeFailure(change, exc))
        if plan:
            self._retrier.call(lambda: self._apply(plan), _is_transient)
        return failures

    def process_change(self, change: Change) -> None:
        self._retrier.fail_fast()
        super().process_change(change)

    def _apply(self, plan: dict[str, Value | None]) -> None:
        deletes = [key for key, value in plan.items() if value is None]
        pipe = self.client.pipeline(transaction=False)
        if self._one_key_per_delete:  # a cluster pipeline sends each key to its node
            for key in deletes:
                pipe.delete(key)
        else:
            for start in range(0, len(deletes), _DEL_CHUNK):
                pipe.delete(*deletes[start : start + _DEL_CHUNK])
        for key, value in plan.items():
            if value is not None:
                pipe.set(key, value, ex=self.ttl)
        pipe.execute()

    def close(self) -> None:
        if self._owns_client:
            self.client.close()
