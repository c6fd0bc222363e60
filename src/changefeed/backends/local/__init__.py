"""The embedded log: topics and partitions in one SQLite file, the zero-setup default.

Offsets are dense per partition (0, 1, 2, ...), like Kafka's, so a gap in front of a
position can only mean retention removed it. Like Kafka, records are stored in batches: one
row holds the records one publish call appended to one partition, so a publisher pays one
B-tree insert per batch instead of per stub, and a reader decodes a batch with one JSON
parse (`records`). WAL mode lets one writer and many readers in several processes share the
file; writers take the lock with ``BEGIN IMMEDIATE`` and assign offsets inside that
transaction, so concurrent publishers never collide.

One module per concept: `log` (the backend, its URL and connections), `schema`, `records`
(how a batch row holds its records), `publisher`, `feed`, `admin` and `retention`.
"""

from changefeed.backends.local.admin import SQLiteAdmin
from changefeed.backends.local.feed import SQLiteChangeFeed
from changefeed.backends.local.log import SQLiteLog
from changefeed.backends.local.publisher import SQLitePublisher
from changefeed.backends.local.records import MAX_BATCH_RECORDS

__all__ = [
    "MAX_BATCH_RECORDS",
    "SQLiteAdmin",
    "SQLiteChangeFeed",
    "SQLiteLog",
    "SQLitePublisher",
]
