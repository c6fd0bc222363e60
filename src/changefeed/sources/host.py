"""What sources that run like pillows share with the layers above them, without importing them.

The registration helpers (`add_couch_bridge`, `add_outbox_relay`, `add_cdc_relay`) take the
user's `App`, but sources sit below the app and the runtime in the layers: importing them here
would tie every source to the whole runtime. `SourceHost` names just the parts of the app they
use (`changefeed.app.App` has them), and `check_one_process` is the split check of a runnable
that reads one stream (``changefeed.runner.run_runnable`` makes the same check first).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from changefeed.backends.base import Publisher
from changefeed.change import ChangeMeta
from changefeed.checkpoints import CheckpointStore
from changefeed.errors import ErrorQueue
from changefeed.stores.registry import DocumentStoreRegistry
from changefeed.topics import TopicRouter


class PublishingHost(Protocol):
    """The application as a publishing source sees it: its router and publisher."""

    router: TopicRouter

    def publisher(self) -> Publisher: ...

    def publish(self, meta: ChangeMeta, topic: str | None = None) -> None:
        """Publish one stub to ``topic`` (routed by document type unless given)."""
        ...


class SourceHost(PublishingHost, Protocol):
    """The application as sources that run like pillows see it: also its state, document
    stores and registry of runnables."""

    document_stores: DocumentStoreRegistry

    @property
    def checkpoints(self) -> CheckpointStore: ...

    @property
    def error_queue(self) -> ErrorQueue: ...

    def add_runnable(self, name: str, factory: Callable[[Any], Any]) -> None:
        """Register ``factory(app)``, which builds a ``changefeed.runner.Runnable``, under
        ``name`` (see ``App.add_runnable``)."""
        ...

    def watch_replication_slot(self, database_url: str, slot: str) -> None:
        """Report a CDC slot's lag in ``changefeed status``."""
        ...


def check_one_process(what: str, num_processes: int, process_number: int) -> None:
    """A source reading one stream (a ``_changes`` feed, an outbox, a slot) cannot be split."""
    if num_processes != 1 or process_number != 0:
        raise ValueError(f"{what} reads one stream: run it as one process")
