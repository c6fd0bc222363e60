"""Where the data sources of a `ReportTablesProcessor` come from: a list, a folder of files,
or a table of the reports database that ``changefeed reports add/remove`` edit.

A provider is read again every refresh, so reading one is cheap when nothing changed: the
folder and the table providers keep what they parsed and parse a file or row again only when
it changed. Every provider parses through `load_data_source` / `DataSourceConfig.from_dict`,
so every format those accept works through every provider.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import sqlalchemy as sa

from changefeed.db import create_tables, make_engine
from changefeed.identifiers import sql_identifier
from changefeed.processors.reports.config import DataSourceConfig, load_data_source
from changefeed.processors.reports.spec import ReportConfigError

DataSourceInput = DataSourceConfig | Mapping[str, Any] | str | Path
"""One data source: a config, its spec as a dict, or the path of its file."""

SUFFIXES = (".yaml", ".yml", ".json")

log = logging.getLogger("changefeed.reports")


@runtime_checkable
class DataSourceProvider(Protocol):
    """Gives the current data sources; called again on every refresh."""

    def get_data_sources(self) -> list[DataSourceConfig]: ...


@runtime_checkable
class ChecksDataSources(Protocol):
    """A provider that skips the data sources it cannot parse (a file or row that does not
    validate) instead of failing them all, and says which: one broken definition among a
    thousand must not stop the others (``changefeed reports list`` shows them)."""

    def invalid_data_sources(self) -> dict[str, str]:
        """Per file or row skipped at the last read, why (the one-line validation error)."""
        ...


class _Skips:
    """Keeps the data sources a provider skipped, logging each once when it turns bad."""

    def __init__(self) -> None:
        self._invalid: dict[str, str] = {}

    def invalid_data_sources(self) -> dict[str, str]:
        return dict(self._invalid)

    def _fresh(
        self,
        where: str,
        key: Hashable,
        cached: tuple[Any, DataSourceConfig] | None,
        parse: Callable[[], DataSourceConfig],
        invalid: dict[str, str],
    ) -> tuple[Any, DataSourceConfig] | None:
        """``cached`` while its ``key`` is current, else parsed again; one that no longer
        validates keeps its last good definition (None: it never had one) and its error
        goes into ``invalid`` under ``where``."""
        if cached is not None and cached[0] == key:
            return cached
        try:
            return key, parse()
        except ReportConfigError as exc:
            invalid[where] = str(exc)
            return cached

    def _record(self, invalid: dict[str, str]) -> None:
        for where, message in invalid.items():
            if self._invalid.get(where) != message:
                log.error("reports: data source %s skipped: %s", where, message)
        self._invalid = invalid


def parse_data_source(source: DataSourceInput) -> DataSourceConfig:
    """A config from any `DataSourceInput` (validated; errors name the field path)."""
    if isinstance(source, DataSourceConfig):
        return source
    if isinstance(source, Mapping):
        return DataSourceConfig.from_dict(source)
    return load_data_source(source)


class ListProvider:
    """A fixed list of data sources, parsed once."""

    def __init__(self, sources: Sequence[DataSourceInput]) -> None:
        self._configs = [parse_data_source(s) for s in sources]

    def get_data_sources(self) -> list[DataSourceConfig]:
        return list(self._configs)


class DirectoryProvider(_Skips):
    """The ``.yaml``, ``.yml`` and ``.json`` files of a folder (not its subfolders); a file
    is parsed again only when its size or modification time changed. One that does not
    validate is said (`invalid_data_sources`) and keeps its last good definition, or is
    skipped when it never had one."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_dir():
            raise ReportConfigError("", f"{self.path} is not a directory")
        self._cache: dict[Path, tuple[tuple[int, int], DataSourceConfig]] = {}

    def get_data_sources(self) -> list[DataSourceConfig]:
        found: dict[Path, tuple[tuple[int, int], DataSourceConfig]] = {}
        invalid: dict[str, str] = {}
        for file in sorted(self.path.iterdir()):
            if file.suffix.lower() not in SUFFIXES or not file.is_file():
                continue
            stat = file.stat()
            key = (stat.st_mtime_ns, stat.st_size)
            fresh = self._fresh(
                file.name, key, self._cache.get(file), partial(load_data_source, file), invalid
            )
            if fresh is not None:
                found[file] = fresh
        self._cache = found
        self._record(invalid)
        return [config for _, config in found.values()]


DATA_SOURCES_TABLE = "changefeed_data_sources"


class SQLDataSourceProvider(_Skips):
    """Data sources kept as rows (name, spec as JSON) of a table of a database, usually the
    reports database; `add` and `remove` edit them (``changefeed reports add/remove``). A
    row that does not validate (edited by hand, or written by another version) is said
    (`invalid_data_sources`) and keeps its last good definition, or is skipped."""

    def __init__(self, url_or_engine: sa.Engine | str, table: str = DATA_SOURCES_TABLE) -> None:
        super().__init__()
        self.engine = make_engine(url_or_engine)
        self.table = sa.Table(
            sql_identifier(table, "table name"),
            sa.MetaData(),
            sa.Column("name", sa.String(255), primary_key=True),
            sa.Column("spec", sa.Text, nullable=False),
            sa.Column("updated_at", sa.Float, nullable=False),
        )
        self._created = False
        self._cache: dict[str, tuple[str, DataSourceConfig]] = {}

    def _create(self) -> None:
        if not self._created:
            create_tables(self.engine, self.table.metadata, [self.table])
            self._created = True

    def add(self, source: DataSourceInput) -> DataSourceConfig:
        """Insert the data source, or replace the one of the same name; validated first."""
        config = parse_data_source(source)
        spec = json.dumps(dict(config.spec), sort_keys=True, default=str)
        self._create()
        t = self.table
        with self.engine.begin() as conn:
            conn.execute(t.delete().where(t.c.name == config.name))
            conn.execute(t.insert().values(name=config.name, spec=spec, updated_at=time.time()))
        return config

    def remove(self, name: str) -> bool:
        """Remove the data source ``name``; False when there is none."""
        self._create()
        with self.engine.begin() as conn:
            return bool(conn.execute(self.table.delete().where(self.table.c.name == name)).rowcount)

    def get_data_sources(self) -> list[DataSourceConfig]:
        self._create()
        t = self.table
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.name, t.c.spec).order_by(t.c.name)).all()
        cache: dict[str, tuple[str, DataSourceConfig]] = {}
        invalid: dict[str, str] = {}
        for name, spec in rows:
            where = f"{t.name}[{name}]"
            fresh = self._fresh(
                where, spec, self._cache.get(name), partial(_from_row, where, spec), invalid
            )
            if fresh is not None:
                cache[name] = fresh
        self._cache = cache
        self._record(invalid)
        return [config for _, config in cache.values()]

    def close(self) -> None:
        self.engine.dispose()


def _from_row(where: str, spec: str) -> DataSourceConfig:
    """A table row's data source; every way it is wrong is a `ReportConfigError` naming
    the row."""
    try:
        data = json.loads(spec)
    except ValueError as exc:
        raise ReportConfigError("", f"not valid JSON: {exc}", where) from None
    try:
        return DataSourceConfig.from_dict(data)
    except ReportConfigError as exc:
        raise exc.in_source(where) from None


def as_provider(
    data_sources: DataSourceProvider | Sequence[DataSourceInput] | str | Path,
) -> DataSourceProvider:
    """The provider of what `ReportTablesProcessor` was given: a provider as is, a directory
    as a `DirectoryProvider`, a list (or one file) as a `ListProvider`."""
    if isinstance(data_sources, DataSourceProvider):
        return data_sources
    if isinstance(data_sources, str | Path):
        if Path(data_sources).is_dir():
            return DirectoryProvider(data_sources)
        return ListProvider([data_sources])
    return ListProvider(list(data_sources))
