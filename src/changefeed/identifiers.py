"""Validation of names that end up in SQL, topic names and URLs, and of the numbers that end
up in 64-bit columns and fields (offsets, ids, versions).

Identifiers are checked before use and always quoted by SQLAlchemy; nothing user-supplied is
ever pasted into SQL text. Numbers are checked against the signed 64-bit range once, here, so
the CLI, the dashboard and the stub decoder refuse the same values with the same words.
"""

from __future__ import annotations

import re

_SQL_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
"""The signed 64-bit range: SQLite and PostgreSQL ``BIGINT``, Kafka offsets, Elasticsearch
versions. A larger Python int would overflow in the driver (an error far from the input)."""


class InvalidIdentifierError(ValueError):
    """A table, column, topic or pillow name that is not allowed."""


class InvalidValueError(InvalidIdentifierError):
    """A number outside the range its kind allows (a subclass, so every place that reports
    bad names as user errors reports bad numbers the same way)."""


def int64(value: object, what: str = "integer", minimum: int = INT64_MIN) -> int:
    """An integer (not a bool) from ``minimum`` to 2^63-1."""
    if type(value) is not int or not minimum <= value <= INT64_MAX:
        raise InvalidValueError(
            f"invalid {what} {value!r}: must be an integer from {minimum} to {INT64_MAX}"
        )
    return value


def offset(value: object, what: str = "offset") -> int:
    """A log offset (or any other count kept in a 64-bit column): 0 to 2^63-1."""
    return int64(value, what, 0)


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


_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*):[^/?#\s]*@")
_QUERY_SECRET = re.compile(r"(?P<key>[?&][^=&#\s]*(?:password|secret)[^=&#\s]*=)[^&#\s]*", re.I)


def redact_url(url: str) -> str:
    """``url`` (or a message holding URLs) with passwords replaced by ``***``: the
    ``user:password@`` part of any scheme and ``...password=``/``...secret=`` options, so an
    error message or log line can name the URL it is about without leaking a credential."""
    out = _URL_PASSWORD.sub(r"\g<head>:***@", url)
    return _QUERY_SECRET.sub(r"\g<key>***", out)


# scheme://user:password@ or scheme://user@ (a token given as user name is a secret too).
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/@\s'\"]+@")
# user:password@host without a scheme (a broker list, a DSN quoted in a message).
_BARE_USERINFO = re.compile(r"(?<![\w/@:.+\-])[\w.%+\-]+:[^\s/@'\"]+@(?=[\w\[])")
# key=value secrets in DSNs and messages (libpq's "password=...", "?token=...").
_KEY_SECRET = re.compile(r"(?i)\b(password|passwd|pwd|token|secret|api_key|apikey)=([^\s&'\"]+)")


def redact_secrets(text: str) -> str:
    """``text`` (a message, a status field, a log line) with every credential it may quote
    replaced by ``***``: what `redact_url` hides, plus a whole ``user@`` part (a token given
    as user name), ``user:password@host`` without a scheme and ``password=``/``token=``
    values. The one redactor of what people and dashboards see; `redact_url` keeps the user
    name for messages about a URL the operator typed."""
    out = redact_url(text)
    out = _URL_USERINFO.sub(r"\1***@", out)
    out = _BARE_USERINFO.sub("***@", out)
    return _KEY_SECRET.sub(r"\1=***", out)
