"""Doc type → topic routing and topic name validation."""

from __future__ import annotations

import pytest

from changefeed.change import ChangeMeta
from changefeed.identifiers import InvalidIdentifierError, topic_name
from changefeed.topics import CASE, FORM, HQ_ROUTES, HQ_TOPICS, META, TopicRouter


def test_default_routes() -> None:
    router = TopicRouter()
    assert router.topic_for(ChangeMeta("d", "sql", "s", document_type="form")) == FORM
    assert router.topic_for(ChangeMeta("d", "sql", "s", document_type="case")) == CASE
    assert router.topic_for(ChangeMeta("d", "sql", "s", document_type="user")) == META
    assert router.topic_for(ChangeMeta("d", "sql", "s")) == META
    assert router.topic_for("case") == CASE
    assert router.topic_for(None) == META
    assert router.topics == ["case", "form", "meta"]


def test_custom_routes_and_default() -> None:
    router = TopicRouter({"invoice": "billing", "payment": "billing"}, default="other")
    assert router.topic_for("invoice") == "billing"
    assert router.topic_for("form") == "other"
    assert router.topics == ["billing", "other"]


@pytest.mark.parametrize("bad", ["", "a b", "x/y", ".", "..", "t" * 250, "topic;drop", None, 3])
def test_invalid_topic_names_rejected(bad: object) -> None:
    with pytest.raises(InvalidIdentifierError):
        topic_name(bad)
    with pytest.raises(InvalidIdentifierError):
        TopicRouter({"form": bad})  # type: ignore[dict-item]
    with pytest.raises(InvalidIdentifierError):
        TopicRouter(default=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("good", ["form", "a.b-c_d", "T1", "x" * 249])
def test_valid_topic_names(good: str) -> None:
    assert topic_name(good) == good


@pytest.mark.parametrize(
    "doc_type, topic",
    [
        ("CommCareCase", "case-sql"),
        ("CommCareCase-Deleted", "case-sql"),
        ("XFormInstance", "form-sql"),
        ("XFormArchived", "form-sql"),
        ("XFormInstance-Deleted", "form-sql"),
        ("SubmissionErrorLog", "form-sql"),
        ("Domain", "domain"),
        ("Domain-DUPLICATE", "domain"),
        ("CommCareUser", "commcare-user"),
        ("WebUser-Deleted", "web-user"),
        ("Group", "group"),
        ("Application", "app"),
        ("LinkedApplication-Deleted", "app"),
        ("SQLLocation", "location"),
        ("ledger", "ledger"),
        ("sms", "sms"),
        ("location", "location"),
        ("CommCareBuild", "meta"),
        ("form", "meta"),
        (None, "meta"),
    ],
)
def test_hq_preset_routes_as_hq_does(doc_type: str | None, topic: str) -> None:
    router = TopicRouter.hq()
    assert router.topic_for(doc_type) == topic
    assert router.topic_for(ChangeMeta("d", "sql", "s", document_type=doc_type)) == topic


def test_hq_preset_covers_every_hq_topic() -> None:
    assert sorted(TopicRouter.hq().topics) == sorted(HQ_TOPICS)
    assert len(set(HQ_TOPICS)) == len(HQ_TOPICS) == 11
    assert all(topic_name(t) == t for t in HQ_TOPICS)
    assert set(HQ_ROUTES.values()) <= set(HQ_TOPICS)
