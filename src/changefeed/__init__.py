"""changefeed: publish document changes to a replayable log and keep derived data in sync.

The names follow CommCare HQ's pillowtop: `ChangeMeta` stubs are published to topics,
`ConstructedPillow` subscribers read them through a change feed, fetch documents from a
`DocumentStore` and run processors, checkpointing per topic partition.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from changefeed.lazy import lazy_names

if TYPE_CHECKING:
    from changefeed.app import App, ConfigError, load_app
    from changefeed.backends import ChangeFeed, Publisher, PublishError, open_backend
    from changefeed.change import Change, ChangeMeta, InvalidChangeError, TopicPartition
    from changefeed.checkpoints import CheckpointStore
    from changefeed.errors import ErrorQueue, RetryPolicy
    from changefeed.pillow import (
        BatchPolicy,
        ConstructedPillow,
        Pillow,
        PillowListener,
        RetrySettings,
    )
    from changefeed.processors import (
        BulkProcessor,
        ChangeFailure,
        FunctionProcessor,
        NoopProcessor,
        Processor,
    )
    from changefeed.stores import (
        DocumentDeleted,
        DocumentNotFoundError,
        DocumentStore,
        DocumentStoreRegistry,
        MemoryDocumentStore,
        SQLDocumentStore,
    )
    from changefeed.topics import TopicRouter

__version__ = "0.1.0"

__all__ = [
    "App",
    "BatchPolicy",
    "BulkProcessor",
    "Change",
    "ChangeFailure",
    "ChangeFeed",
    "ChangeMeta",
    "CheckpointStore",
    "ConfigError",
    "ConstructedPillow",
    "DocumentDeleted",
    "DocumentNotFoundError",
    "DocumentStore",
    "DocumentStoreRegistry",
    "ErrorQueue",
    "FunctionProcessor",
    "InvalidChangeError",
    "MemoryDocumentStore",
    "NoopProcessor",
    "Pillow",
    "PillowListener",
    "Processor",
    "PublishError",
    "Publisher",
    "RetryPolicy",
    "RetrySettings",
    "SQLDocumentStore",
    "TopicPartition",
    "TopicRouter",
    "load_app",
    "open_backend",
]

# Where each public name lives: imported on first use, so that ``import changefeed`` (and
# ``changefeed --help``) does not load SQLAlchemy and the backends.
_WHERE = {
    "App": "changefeed.app",
    "ConfigError": "changefeed.app",
    "load_app": "changefeed.app",
    "ChangeFeed": "changefeed.backends",
    "Publisher": "changefeed.backends",
    "PublishError": "changefeed.backends",
    "open_backend": "changefeed.backends",
    "Change": "changefeed.change",
    "ChangeMeta": "changefeed.change",
    "InvalidChangeError": "changefeed.change",
    "TopicPartition": "changefeed.change",
    "CheckpointStore": "changefeed.checkpoints",
    "ErrorQueue": "changefeed.errors",
    "RetryPolicy": "changefeed.errors",
    "BatchPolicy": "changefeed.pillow",
    "ConstructedPillow": "changefeed.pillow",
    "Pillow": "changefeed.pillow",
    "PillowListener": "changefeed.pillow",
    "RetrySettings": "changefeed.pillow",
    "BulkProcessor": "changefeed.processors",
    "ChangeFailure": "changefeed.processors",
    "FunctionProcessor": "changefeed.processors",
    "NoopProcessor": "changefeed.processors",
    "Processor": "changefeed.processors",
    "DocumentDeleted": "changefeed.stores",
    "DocumentNotFoundError": "changefeed.stores",
    "DocumentStore": "changefeed.stores",
    "DocumentStoreRegistry": "changefeed.stores",
    "MemoryDocumentStore": "changefeed.stores",
    "SQLDocumentStore": "changefeed.stores",
    "TopicRouter": "changefeed.topics",
}

__getattr__, __dir__ = lazy_names(__name__, _WHERE)
