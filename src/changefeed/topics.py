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

    @property
    def topics(self) -> list[str]:
        return sorted({*self.routes.values(), self.default})
