"""Processors: what pillows do with changes (index, report tables, caches, republish)."""

from changefeed.processors.base import (
    BulkProcessor,
    ChangeFailure,
    FunctionProcessor,
    NoopProcessor,
    Processor,
)

__all__ = ["BulkProcessor", "ChangeFailure", "FunctionProcessor", "NoopProcessor", "Processor"]
