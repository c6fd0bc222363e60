"""Configurable report tables: data sources defined in JSON/YAML, kept in sync by a pillow."""

from changefeed.processors.reports.config import (
    ColumnConfig,
    DataSourceConfig,
    load_data_source,
)
from changefeed.processors.reports.definition import DefinitionChange, definition_hash
from changefeed.processors.reports.multi import (
    DataSourceWriteError,
    ReportStats,
    ReportTablesProcessor,
)
from changefeed.processors.reports.processor import (
    ReportSchemaError,
    ReportTableProcessor,
    build_table,
)
from changefeed.processors.reports.providers import (
    DataSourceProvider,
    DirectoryProvider,
    ListProvider,
    SQLDataSourceProvider,
)
from changefeed.processors.reports.selection import Selection, SelectionError
from changefeed.processors.reports.spec import ReportConfigError
from changefeed.processors.reports.states import SourceCounters, SourceState, StateStore

__all__ = [
    "ColumnConfig",
    "DataSourceConfig",
    "DataSourceProvider",
    "DataSourceWriteError",
    "DefinitionChange",
    "DirectoryProvider",
    "ListProvider",
    "ReportConfigError",
    "ReportSchemaError",
    "ReportStats",
    "ReportTableProcessor",
    "ReportTablesProcessor",
    "SQLDataSourceProvider",
    "Selection",
    "SelectionError",
    "SourceCounters",
    "SourceState",
    "StateStore",
    "build_table",
    "definition_hash",
    "load_data_source",
]
