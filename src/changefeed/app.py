"""The application object: which log, where our state lives, document stores, pillows.

Users build one `App` in their own code and point the CLI at it (``--app module:attr`` or
``CHANGEFEED_APP``). Everything the CLI, the runner and the dashboard need is reached from
here, so there is no global configuration.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sqlite3
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from typing import Any, TypeVar

import sqlalchemy as sa

from changefeed.backends import Backend, ChangeFeed, FeedOptions, Publisher, open_backend
from changefeed.batch_buffer import DEFAULT_BATCHING
from changefeed.change import ChangeMeta
from changefeed.checkpoints import CheckpointStore
from changefeed.db import not_created_yet
from changefeed.errors import ErrorQueue, RetryPolicy
from changefeed.identifiers import object_name
from changefeed.pillow import BatchPolicy, Pillow, RetrySettings
from changefeed.processors.base import Processor
from changefeed.runner import Runnable
from changefeed.stores.registry import DocumentStoreRegistry
from changefeed.topics import TopicRouter

DEFAULT_LOG_URL = "sqlite:///.changefeed/log.db"
DEFAULT_STATE_URL = "sqlite:///.changefeed/state.db"

NO_APP = "no app was given (--app or CHANGEFEED_APP) or it defines no pillows"
"""Why nothing was found to run or show: worded once, for every command that looks."""

PillowFactory = Callable[["App"], Pillow]
RunnableFactory = Callable[["App"], Runnable]


_Settings = TypeVar("_Settings", BatchPolicy, RetrySettings)


class ConfigError(ValueError):
    """Bad configuration: an app that cannot be found or a setting that makes no sense."""


class App:
    """Holds the log backend, the state database and the registered pillows."""

    def __init__(
        self,
        log_url: str | None = None,
        state_url: str | None = None,
        *,
        router: TopicRouter | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        self.log_url = log_url or os.environ.get("CHANGEFEED_LOG", DEFAULT_LOG_URL)
        self.state_url = state_url or os.environ.get("CHANGEFEED_STATE", DEFAULT_STATE_URL)
        self.router = router or TopicRouter()
        self.retry_policy = retry_policy or RetryPolicy()
        self.document_stores = DocumentStoreRegistry()
        self._pillows: dict[str, PillowFactory] = {}
        self._runnables: dict[str, RunnableFactory] = {}
        """Everything else that runs like a pillow: bridges, relays (by name)."""
        self.replication_slots: list[tuple[str, str]] = []
        """(database URL, slot) pairs whose lag `changefeed status` reports."""
        self._read_only = False
        self._backend: Backend | None = None
        self._checkpoints: CheckpointStore | None = None
        self._errors: ErrorQueue | None = None
        self._publisher: Publisher | None = None

    # -- shared resources, made on first use ------------------------------------------

    @property
    def read_only(self) -> bool:
        """Set by commands that only look (``changefeed status``): an embedded log or SQLite
        state database that does not exist yet is read as empty instead of being created."""
        return self._read_only

    @read_only.setter
    def read_only(self, value: bool) -> None:
        if self._read_only and not value:
            # What was opened for looking may be an empty stand-in: open it again for real.
            if self._backend is not None:
                self._backend.close()
            self._backend = None
            self._checkpoints = None
            self._errors = None
        self._read_only = value

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = self._open_backend(create=not self.read_only)
        return self._backend

    def check_log(self) -> None:
        """Open the log once and close it, creating nothing: a bad URL or an unreadable log
        is a `ConfigError` now, before a command does anything."""
        self._open_backend(create=False).close()

    def _open_backend(self, *, create: bool) -> Backend:
        try:
            return open_backend(self.log_url, create=create)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open log {self.log_url}: {_first_line(exc)}") from None

    @property
    def checkpoints(self) -> CheckpointStore:
        """The state database, opened (and its tables made) on first use, so that a bad,
        unwritable or unreachable ``state_url`` is one `ConfigError` here rather than a
        driver error from whichever command touched it first."""
        if self._checkpoints is None:
            url = self.state_url
            if self.read_only and _missing_sqlite_file(url):
                url = "sqlite://"  # empty, in memory: looking creates no state database
            try:
                store = CheckpointStore(url)
                store.create()
            except (sa.exc.ArgumentError, sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
                raise ConfigError(
                    f"cannot open state database {self.state_url}: {_first_line(exc)}"
                ) from None
            except (OSError, ImportError, ValueError) as exc:
                raise ConfigError(
                    f"cannot open state database {self.state_url}: {_first_line(exc)}"
                ) from None
            self._checkpoints = store
        return self._checkpoints

    @property
    def error_queue(self) -> ErrorQueue:
        if self._errors is None:
            self._errors = ErrorQueue(self.checkpoints.engine, self.retry_policy)
        return self._errors

    def publisher(self) -> Publisher:
        """The app's shared publisher (made once)."""
        if self._publisher is None:
            self._publisher = self.backend.publisher()
        return self._publisher

    def publish(self, meta: ChangeMeta, topic: str | None = None) -> None:
        """Publish one stub to its topic (routed by document type unless given)."""
        self.publisher().publish(topic or self.router.topic_for(meta), meta)

    def publish_many(self, metas: Iterable[ChangeMeta]) -> None:
        topic_for = self.router.topic_for
        self.publisher().publish_many((topic_for(m), m) for m in metas)

    def change_feed(self, topics: Sequence[str], options: FeedOptions | None = None) -> ChangeFeed:
        """A feed on ``topics`` of this app's log (`Backend.open_feed`)."""
        return self.backend.open_feed(topics, options or FeedOptions())

    def watch_replication_slot(self, database_url: str, slot: str) -> None:
        """Report a PostgreSQL CDC slot's lag in ``changefeed status`` (a slot nobody reads
        holds WAL forever, so it is worth watching next to the pillows)."""
        self.replication_slots.append((database_url, slot))

    # -- pillows -----------------------------------------------------------------------

    def _check_new_name(self, name: str) -> None:
        object_name(name, "runnable name")
        if name in self._pillows or name in self._runnables:
            raise ConfigError(f"{name!r} is registered twice")

    def add_pillow(self, name: str, factory: PillowFactory) -> None:
        object_name(name, "pillow name")
        self._check_new_name(name)
        self._pillows[name] = factory

    def add_runnable(self, name: str, factory: RunnableFactory) -> None:
        """Register something that runs like a pillow but is not one (the Couch bridge, an
        outbox or CDC relay): ``changefeed run NAME``, ``run --all`` and the supervisor run
        it alike."""
        self._check_new_name(name)
        self._runnables[name] = factory

    def runnable(self, name: str | None = None) -> Callable[[RunnableFactory], RunnableFactory]:
        """Decorator registering a runnable factory ``f(app) -> Runnable``."""

        def register(factory: RunnableFactory) -> RunnableFactory:
            self.add_runnable(name or factory.__name__, factory)
            return factory

        return register

    def pillow(self, name: str | None = None) -> Callable[[PillowFactory], PillowFactory]:
        """Decorator registering a pillow factory ``f(app) -> Pillow``."""

        def register(factory: PillowFactory) -> PillowFactory:
            self.add_pillow(name or factory.__name__, factory)
            return factory

        return register

    def constructed_pillow(
        self,
        name: str,
        topics: Sequence[str],
        processors: Processor | Sequence[Processor],
        *,
        feed_options: dict[str, Any] | None = None,
        **options: Any,
    ) -> Pillow:
        """A pillow on this app's log, checkpoints, error queue and document stores.

        ``options`` go to `Pillow`; the fields of its settings may be given one by one, as
        pillowtop users write them: ``batch_size``, ``max_wait``, ``adaptive`` make its
        `BatchPolicy` (or pass ``batching=``), and ``retry_policy`` (default: the app's),
        ``max_batch_retries``, ``batch_backoff``, ``stale_read_retries``,
        ``stale_read_delay`` its `RetrySettings` (or pass ``retries=``)."""
        given = "batching" in options or any(f.name in options for f in fields(BatchPolicy))
        # Nothing said about batching: the pillow takes what its processors prefer.
        batching = _settings(BatchPolicy, "batching", options) if given else None
        retries = _settings(RetrySettings, "retries", options, retry_policy=self.retry_policy)
        feed_options = dict(feed_options or {})
        feed_options.setdefault("client_id", name)
        max_wait = (batching or DEFAULT_BATCHING).max_wait
        feed_options.setdefault("idle_timeout", min(1.0, max_wait))
        return Pillow(
            name,
            self.change_feed(topics, FeedOptions.from_dict(feed_options)),
            processors,
            checkpoints=self.checkpoints,
            error_queue=self.error_queue,
            document_stores=self.document_stores,
            batching=batching,
            retries=retries,
            **options,
        )

    @property
    def pillow_names(self) -> list[str]:
        """Registered pillows (readers of the log with checkpoints per partition)."""
        return sorted(self._pillows)

    @property
    def runnable_names(self) -> list[str]:
        """Everything ``changefeed run`` can run: pillows and the other runnables."""
        return sorted([*self._pillows, *self._runnables])

    def _unknown(self, what: str, name: str, known: list[str]) -> ConfigError:
        if not self.runnable_names:
            return ConfigError(f"unknown {what} {name!r}: {NO_APP}")
        return ConfigError(f"unknown {what} {name!r} (known: {', '.join(known) or 'none'})")

    def get_pillow(self, name: str) -> Pillow:
        try:
            factory = self._pillows[name]
        except KeyError:
            raise self._unknown("pillow", name, self.pillow_names) from None
        pillow = factory(self)
        if pillow.name != name:
            raise ConfigError(f"pillow factory {name!r} built a pillow named {pillow.name!r}")
        return pillow

    def get_runnable(self, name: str) -> Runnable:
        """A pillow or other runnable, built by its factory."""
        if name in self._pillows:
            return self.get_pillow(name)
        try:
            factory = self._runnables[name]
        except KeyError:
            raise self._unknown("pillow or runnable", name, self.runnable_names) from None
        runnable = factory(self)
        if runnable.name != name:
            raise ConfigError(f"factory {name!r} built a runnable named {runnable.name!r}")
        return runnable

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
        if self._backend is not None:
            self._backend.close()
            self._backend = None
        self.document_stores.close()


def _missing_sqlite_file(url: str) -> bool:
    """True for a SQLite URL naming a file that does not exist yet (`not_created_yet`)."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return False  # reported as a bad URL where the database is opened
    database = parsed.database
    return (
        parsed.get_backend_name() == "sqlite"
        and bool(database)
        and database != ":memory:"
        and not_created_yet(str(database))
    )


def _takes_no_arguments(factory: Callable[..., Any]) -> bool:
    try:
        inspect.signature(factory).bind()
    except TypeError:
        return False
    except ValueError:  # no signature to inspect (some builtins): let the call decide
        return True
    return True


def _first_line(exc: BaseException) -> str:
    """A driver error's first line (psycopg adds hints, SQLAlchemy a background link)."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_app(spec: str | None) -> App:
    """Find the user's App from ``module:attr`` (or ``CHANGEFEED_APP``); a default App
    (log and state from the environment) when neither is given."""
    spec = spec or os.environ.get("CHANGEFEED_APP")
    if not spec:
        return App()
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"app must be given as module:attribute, got {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        # The console script's sys.path lacks the working directory; ``--app myapp:app``
        # means the user's module next to them, as with other ``module:attr`` CLIs.
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import app module {module_name!r}: {exc}") from None
    try:
        app = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"module {module_name!r} has no attribute {attr!r}") from None
    if callable(app) and not isinstance(app, App):
        # A factory takes no arguments; anything else (``json:dumps``) is not an app, and
        # calling it would only fail with its own TypeError.
        if not _takes_no_arguments(app):
            raise ConfigError(
                f"{spec} is not a changefeed.App nor a factory without arguments "
                f"(got {type(app).__name__})"
            )
        app = app()
    if not isinstance(app, App):
        raise ConfigError(f"{spec} is not a changefeed.App (got {type(app).__name__})")
    return app


def _settings(
    kind: type[_Settings], keyword: str, options: dict[str, Any], **defaults: Any
) -> _Settings:
    """The ``keyword=`` settings object from ``options``, or one made of its fields given
    one by one (taken out of ``options``); not both."""
    loose = {f.name: options.pop(f.name) for f in fields(kind) if f.name in options}
    given = options.pop(keyword, None)
    if given is None:
        return kind(**{**defaults, **loose})
    if loose:
        raise TypeError(f"pass either {keyword}= or {', '.join(loose)}, not both")
    if not isinstance(given, kind):
        raise TypeError(f"{keyword} must be a {kind.__name__}")
    return given
