"""Data source providers: a list, a folder of files, a table of a database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from changefeed.processors.reports import (
    DataSourceProvider,
    DirectoryProvider,
    ListProvider,
    ReportConfigError,
    SQLDataSourceProvider,
)
from changefeed.processors.reports.providers import ChecksDataSources, as_provider


def spec(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "table": f"report_{name}", "columns": [{"name": "owner"}], **extra}


def test_a_directory_is_read_again_and_only_changed_files_are_parsed(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(spec("a")))
    (tmp_path / "b.yaml").write_text("name: b\ntable: report_b\ncolumns: [{name: owner}]\n")
    (tmp_path / "notes.txt").write_text("not a data source")
    provider = as_provider(tmp_path)
    assert isinstance(provider, DirectoryProvider)
    first = provider.get_data_sources()
    assert [c.name for c in first] == ["a", "b"]
    (tmp_path / "b.yaml").write_text("name: b\ntable: report_b2\ncolumns: [{name: owner}]\n")
    again = provider.get_data_sources()
    assert again[0] is first[0] and again[1].table == "report_b2"
    (tmp_path / "a.json").unlink()
    assert [c.name for c in provider.get_data_sources()] == ["b"]


def test_a_bad_file_is_skipped_and_names_itself(tmp_path: Path) -> None:
    # One broken definition among many must not stop the others: skipped, and said.
    (tmp_path / "bad.json").write_text(json.dumps(spec("bad", colour="red")))
    (tmp_path / "good.json").write_text(json.dumps(spec("good")))
    provider = DirectoryProvider(tmp_path)
    assert isinstance(provider, ChecksDataSources)
    assert [c.name for c in provider.get_data_sources()] == ["good"]
    (message,) = provider.invalid_data_sources().values()
    assert "bad.json: colour: unknown field" in message
    (tmp_path / "bad.json").write_text(json.dumps(spec("bad")))  # fixed
    assert [c.name for c in provider.get_data_sources()] == ["bad", "good"]
    assert provider.invalid_data_sources() == {}
    (tmp_path / "bad.json").write_text(json.dumps(spec("bad", table="x y")))  # broken again
    kept = provider.get_data_sources()  # the last good definition stays, the error is said
    assert [(c.name, c.table) for c in kept] == [("bad", "report_bad"), ("good", "report_good")]
    assert "bad.json: table" in provider.invalid_data_sources()["bad.json"]
    with pytest.raises(ReportConfigError, match="is not a directory"):
        DirectoryProvider(tmp_path / "bad.json")


def test_a_row_that_does_not_validate_is_skipped(db_url: str) -> None:
    provider = SQLDataSourceProvider(db_url)
    provider.add(spec("a"))
    provider.add(spec("b"))
    with provider.engine.begin() as conn:  # edited by hand, or by another version
        t = provider.table
        conn.execute(t.update().where(t.c.name == "b").values(spec='{"name": "b"}'))
    assert [c.name for c in provider.get_data_sources()] == ["a"]
    assert list(provider.invalid_data_sources()) == ["changefeed_data_sources[b]"]
    provider.close()


def test_a_list_of_configs_dicts_and_files(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text(json.dumps(spec("c")))
    provider = as_provider([spec("a"), tmp_path / "c.json"])
    assert isinstance(provider, ListProvider) and isinstance(provider, DataSourceProvider)
    assert [c.name for c in provider.get_data_sources()] == ["a", "c"]


def test_sql_provider_adds_replaces_and_removes(db_url: str, tmp_path: Path) -> None:
    provider = SQLDataSourceProvider(db_url)
    assert provider.get_data_sources() == []
    assert provider.add(spec("a")).table == "report_a"
    (tmp_path / "b.json").write_text(json.dumps(spec("b")))
    provider.add(tmp_path / "b.json")
    provider.add(spec("a", description="new"))  # replaced by name
    other = SQLDataSourceProvider(sa.create_engine(db_url))  # another process, say
    configs = other.get_data_sources()
    assert [(c.name, c.description) for c in configs] == [("a", "new"), ("b", "")]
    with pytest.raises(ReportConfigError, match="columns: required field is missing"):
        provider.add({"name": "x", "table": "t"})
    assert provider.remove("a") and not provider.remove("a")
    assert [c.name for c in other.get_data_sources()] == ["b"]
    with pytest.raises(ValueError, match="table name"):
        SQLDataSourceProvider(db_url, table="bad name; drop")
    provider.close()
    other.close()


def test_hq_data_sources_go_through_the_table_and_are_routed_by_domain(db_url: str) -> None:
    from changefeed.processors.reports import definition_hash, load_data_source
    from changefeed.processors.reports.routing import indexable_clauses

    fixture = Path(__file__).parents[2] / "data" / "hq" / "households.json"
    provider = SQLDataSourceProvider(db_url)
    added = provider.add(fixture)
    (read,) = SQLDataSourceProvider(db_url).get_data_sources()
    assert (
        definition_hash(read)
        == definition_hash(added)
        == definition_hash(load_data_source(fixture))
    )
    assert ("domain", ("river-district",)) in indexable_clauses(read.spec["filter"])
    provider.close()
