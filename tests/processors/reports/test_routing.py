"""The routing index: which data sources a document or a deletion can reach."""

from __future__ import annotations

from typing import Any

import pytest

from changefeed.change import ChangeMeta
from changefeed.processors.reports.routing import Router, indexable_clauses


def eq(prop: str, value: Any, *, expression: bool = False) -> dict[str, Any]:
    if expression:
        return {
            "type": "equals",
            "expression": {"type": "property_name", "property_name": prop},
            "value": value,
        }
    return {"type": "equals", "property_name": prop, "value": value}


@pytest.mark.parametrize(
    ("spec", "clauses"),
    [
        (None, []),
        (eq("domain", "a"), [("domain", ("a",))]),
        (eq("domain", "a", expression=True), [("domain", ("a",))]),
        (
            {"type": "in", "property_name": "doc_type", "values": ["x", "y"]},
            [("doc_type", ("x", "y"))],
        ),
        (
            {
                "type": "and",
                "filters": [eq("domain", "a"), {"type": "exists", "property_name": "z"}],
            },
            [("domain", ("a",))],
        ),
        ({"type": "or", "filters": [eq("domain", "a"), eq("domain", "b")]}, []),
        ({"type": "not", "filter": eq("domain", "a")}, []),
        ({"type": "in", "property_name": "k", "values": [[1]]}, []),  # unhashable
        (
            {
                "type": "equals",
                "expression": {"type": "property_path", "property_path": ["a", "b"]},
                "value": 1,
            },
            [],
        ),
    ],
    ids=["none", "equals", "expression", "in", "and", "or", "not", "unhashable", "path"],
)
def test_indexable_clauses(spec: Any, clauses: list[Any]) -> None:
    assert indexable_clauses(spec) == clauses


def both(domain: str) -> dict[str, Any]:
    return {"type": "and", "filters": [eq("doc_type", "case"), eq("domain", domain)]}


ROUTER = Router(
    [
        (both("a"), "a"),
        (both("b"), "b"),
        ({"type": "in", "property_name": "domain", "values": ["a", "c"]}, "a-or-c"),
        ({"type": "exists", "property_name": "owner"}, "everything"),
        (eq("doc_type", "form"), "forms"),
    ]
)


def test_the_most_selective_property_is_indexed() -> None:
    assert sorted(ROUTER.properties) == ["doc_type", "domain"]
    assert ROUTER.candidates({"domain": "b", "doc_type": "case"}) == ["everything", "b"]


def test_a_shared_clause_does_not_hide_the_selective_one() -> None:
    # HQ's shape: every data source says doc_type == "CommCareCase" and its own domain.
    # Counting clauses would tie the two properties; counting distinct values picks domain.
    router = Router(
        (
            {"type": "and", "filters": [eq("doc_type", "CommCareCase"), eq("domain", f"d{i}")]},
            f"d{i}",
        )
        for i in range(50)
    )
    assert router.properties == ["domain"]
    assert router.candidates({"domain": "d7", "doc_type": "CommCareCase"}) == ["d7"]


@pytest.mark.parametrize(
    ("doc", "reached"),
    [
        ({"domain": "a", "doc_type": "case"}, {"a", "a-or-c", "everything"}),
        ({"domain": "c", "doc_type": "form"}, {"a-or-c", "everything", "forms"}),
        ({"domain": "zz"}, {"everything"}),
        ({"domain": ["a"], "doc_type": {"x": 1}}, {"everything"}),  # unhashable values
    ],
)
def test_candidates(doc: dict[str, Any], reached: set[str]) -> None:
    found = ROUTER.candidates(doc)
    assert set(found) == reached and len(found) == len(reached)


def test_deletions_are_routed_by_the_stub() -> None:
    meta = ChangeMeta("x", "sql", "docs", domain="b", document_type="form")
    assert set(ROUTER.candidates_of_deletion(meta)) == {"b", "everything", "forms"}
    # nothing known: every data source of the property
    unknown = ChangeMeta("x", "sql", "docs")
    assert set(ROUTER.candidates_of_deletion(unknown)) == {
        "a",
        "b",
        "a-or-c",
        "everything",
        "forms",
    }
    # indexed on a property the stub does not carry: a candidate for every deletion
    owners = Router([(eq("owner", "ann"), "ann"), (eq("owner", "bob"), "bob")])
    assert set(owners.candidates_of_deletion(meta)) == {"ann", "bob"}
