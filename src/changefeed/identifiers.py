"""Validation of names that end up in SQL, topic names and URLs.

Identifiers are checked before use and always quoted by SQLAlchemy; nothing user-supplied is
ever pasted into SQL text.
"""

from __future__ import annotations

import re

_SQL_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class InvalidIdentifierError(ValueError):
    """A table, column, topic or pillow name that is not allowed."""


def sql_identifier(name: object, what: str = "identifier") -> str:
    """A table or column name: letters, digits, underscore; at most 63 characters."""
    if not isinstance(name, str) or not _SQL_IDENT.match(name):
        raise InvalidIdentifierError(
            f"invalid {what} {name!r}: use letters, digits and '_' (not first), at most 63"
        )
    return name


def topic_name(name: object) -> str:
    """A Kafka-compatible topic name."""
    if not isinstance(name, str) or not _TOPIC.match(name) or name in (".", ".."):
        raise InvalidIdentifierError(
            f"invalid topic name {name!r}: use letters, digits, '.', '_' and '-', at most 249"
        )
    return name


def object_name(name: object, what: str = "name") -> str:
    """A pillow, data source or processor name."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidIdentifierError(
            f"invalid {what} {name!r}: use letters, digits, '.', '_' and '-', at most 128"
        )
    return name
