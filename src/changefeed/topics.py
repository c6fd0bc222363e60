"""Routing of document types to topics: forms and cases get their own, the rest go to meta.

Pillows subscribe to the topics they care about (an index of cases reads only ``case``), so
the map is part of the contract between publishers and pillows and is validated up front.
"""

from __future__ import annotations

from collections.abc import Mapping

from changefeed.change import ChangeMeta
from changefeed.identifiers import topic_name

FORM = "form"
CASE = "case"
META = "meta"

DEFAULT_ROUTES: Mapping[str, str] = {"form": FORM, "case": CASE}

# CommCare HQ's topics (corehq.apps.change_feed.topics), for pillows that share a Kafka
# cluster with HQ. The table in docs/hq-compat.md lists which document types go where.
HQ_CASE = "case-sql"
HQ_FORM = "form-sql"
HQ_SMS = "sms"
HQ_LEDGER = "ledger"
HQ_COMMCARE_USER = "commcare-user"
HQ_GROUP = "group"
HQ_WEB_USER = "web-user"
HQ_LOCATION = "location"
HQ_DOMAIN = "domain"
HQ_META = "meta"
HQ_APP = "app"

HQ_TOPICS: tuple[str, ...] = (
    HQ_CASE,
    HQ_COMMCARE_USER,
    HQ_DOMAIN,
    HQ_FORM,
    HQ_GROUP,
    HQ_LEDGER,
    HQ_META,
    HQ_SMS,
    HQ_WEB_USER,
    HQ_APP,
    HQ_LOCATION,
)
"""Every topic HQ publishes to."""

_HQ_DOC_TYPES: Mapping[str, tuple[str, ...]] = {
    HQ_CASE: ("CommCareCase", "CommCareCase-Deleted"),
    HQ_FORM: (
        "XFormInstance",
        "XFormInstance-Deleted",
        "XFormArchived",
        "XFormDeprecated",
        "XFormDuplicate",
        "XFormError",
        "SubmissionErrorLog",
        "HQSubmission",
    ),
    HQ_DOMAIN: ("Domain", "Domain-Deleted", "Domain-DUPLICATE"),
    HQ_COMMCARE_USER: ("CommCareUser", "CommCareUser-Deleted"),
    HQ_WEB_USER: ("WebUser", "WebUser-Deleted"),
    HQ_GROUP: ("Group", "Group-Deleted"),
    HQ_APP: (
        "Application",
        "Application-Deleted",
        "RemoteApp",
        "RemoteApp-Deleted",
        "LinkedApplication",
        "LinkedApplication-Deleted",
    ),
    HQ_LOCATION: ("SQLLocation",),
}

HQ_ROUTES: Mapping[str, str] = {
    # A stub whose document type is a topic name (HQ's ledgers and SMS) goes to that topic.
    **{topic: topic for topic in HQ_TOPICS},
    **{doc_type: topic for topic, types in _HQ_DOC_TYPES.items() for doc_type in types},
}
"""HQ's document type → topic map; anything else goes to ``meta``, as in HQ."""


class TopicRouter:
    """Maps a stub's ``document_type`` to a topic; unmapped types go to the default topic."""

    def __init__(self, routes: Mapping[str, str] | None = None, default: str = META) -> None:
        self.routes = {str(k): topic_name(v) for k, v in (routes or DEFAULT_ROUTES).items()}
        self.default = topic_name(default)

    def topic_for(self, meta: ChangeMeta | str | None) -> str:
        doc_type = meta.document_type if isinstance(meta, ChangeMeta) else meta
        if doc_type is None:
            return self.default
        return self.routes.get(doc_type, self.default)

    @classmethod
    def hq(cls) -> TopicRouter:
        """CommCare HQ's routing (`HQ_ROUTES`, default ``meta``): publish where HQ's pillows
        read, and read what HQ publishes."""
        return cls(HQ_ROUTES, default=HQ_META)

    @property
    def topics(self) -> list[str]:
        return sorted({*self.routes.values(), self.default})
