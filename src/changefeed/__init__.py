"""changefeed: publish document changes to a replayable log and keep derived data in sync.

The names follow CommCare HQ's pillowtop: `ChangeMeta` stubs are published to topics,
`ConstructedPillow` subscribers read them through a change feed, fetch documents from a
`DocumentStore` and run processors, checkpointing per topic partition.
"""

from changefeed.app import App, ConfigError, load_app
from changefeed.backends import ChangeFeed, Publisher, PublishError, open_backend
from changefeed.change import Change, ChangeMeta, InvalidChangeError, TopicPartition
from changefeed.checkpoints import CheckpointStore
from changefeed.errors import ErrorQueue, RetryPolicy
from changefeed.pillow import ConstructedPillow, Pillow, PillowListener
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
    "SQLDocumentStore",
    "TopicPartition",
    "TopicRouter",
    "load_app",
    "open_backend",
]
