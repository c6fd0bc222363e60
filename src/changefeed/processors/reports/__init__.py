"""Configurable report tables: data sources defined in JSON/YAML, kept in sync by a pillow."""

from changefeed.processors.reports.config import (
    ColumnConfig,
    DataSourceConfig,
    load_data_source,
)
from changefeed.processors.reports.processor import (
    ReportSchemaError,
    ReportTableProcessor,
    build_table,
)
from changefeed.processors.reports.spec import ReportConfigError

__all__ = [
    "ColumnConfig",
    "DataSourceConfig",
    "ReportConfigError",
    "ReportSchemaError",
    "ReportTableProcessor",
    "build_table",
    "load_data_source",
]
