"""Configurable report tables: data sources defined in JSON/YAML, kept in sync by a pillow."""

from changefeed.processors.reports.config import (
    ColumnConfig,
    DataSourceConfig,
    load_data_source,
)
from changefeed.processors.reports.definition import DefinitionChange, definition_hash
from changefeed.processors.reports.processor import (
    ReportSchemaError,
    ReportTableProcessor,
    build_table,
)
from changefeed.processors.reports.spec import ReportConfigError

__all__ = [
    "ColumnConfig",
    "DataSourceConfig",
    "DefinitionChange",
    "ReportConfigError",
    "ReportSchemaError",
    "ReportTableProcessor",
    "build_table",
    "definition_hash",
    "load_data_source",
]
