"""The one escaper for human output: credentials redacted, control characters escaped.

Ids, messages and URLs come from documents, stubs and configuration, so anything printed for
a person goes through `human` (or `escape` when no URL can be in it): an ANSI escape or a
newline in a document id must not rewrite the operator's terminal or forge a log line, and
a password in a URL must not reach a terminal, a log file or a screenshot. JSON output is
printed exactly (it is already escaped by the encoder) and does not come through here.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

from changefeed.clock import SYSTEM_CLOCK, Clock
from changefeed.identifiers import redact_secrets

__all__ = [
    "DedupeFilter",
    "EscapingFilter",
    "escape",
    "human",
    "install_log_filters",
    "plural",
    "redact",
    "redact_url",
    "size",
    "when",
]

# C0 and C1 controls, DEL, line/paragraph separators and bidi overrides: each can move the
# cursor, end a line, or reorder what the reader sees.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text: object) -> str:
    """``text`` with control characters shown as escapes (``\\x1b``, ``\\n``)."""
    return _CONTROL.sub(_escape_char, str(text))


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def redact(text: object) -> str:
    """``text`` with the credentials of any URL in it, and ``password=`` style values,
    replaced by ``***`` (`changefeed.identifiers.redact_secrets`, the one redactor, which
    `changefeed status --json` and the dashboard use too)."""
    return redact_secrets(str(text))


def redact_url(url: str) -> str:
    """One URL with its credentials hidden."""
    return redact(url)


def human(text: object) -> str:
    """What a person may see of ``text``: secrets redacted, control characters escaped."""
    return escape(redact(text))


class EscapingFilter(logging.Filter):
    """Makes every log record's message human-safe (redacted, escaped) before a handler
    formats it, so log lines of pillows and client libraries need no changes of their own.
    Tracebacks are left as they are: they are multi-line by nature and come from our code."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: let logging report it as usual
            return True
        safe = human(message)
        if safe != message or record.args:
            record.msg, record.args = safe, None
        return True


class DedupeFilter(logging.Filter):
    """Drops a warning identical to one logged within ``window`` seconds: client libraries
    (elastic_transport, urllib3) log the same warning once per node or connection attempt,
    so one retry of a batch printed four identical lines."""

    def __init__(self, window: float = 30.0, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__()
        self.window = window
        self.clock = clock
        self._seen: dict[tuple[str, int, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR or record.name.startswith("changefeed"):
            return True
        try:
            key = (record.name, record.levelno, record.getMessage())
        except Exception:
            return True
        now = self.clock.monotonic()
        last = self._seen.get(key)
        if last is not None and now - last < self.window:
            return False
        if len(self._seen) > 1000:
            self._seen = {k: t for k, t in self._seen.items() if now - t < self.window}
        self._seen[key] = now
        return True


def install_log_filters(logger: logging.Logger | None = None) -> None:
    """Put the dedupe and escaping filters on every handler of the root logger (or
    ``logger``), once."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, DedupeFilter) for f in handler.filters):
            handler.addFilter(DedupeFilter())
        if not any(isinstance(f, EscapingFilter) for f in handler.filters):
            handler.addFilter(EscapingFilter())


def plural(count: int, noun: str) -> str:
    """``1 stub``, ``2 stubs``: a count with its noun (regular plurals only)."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def when(ts: float) -> str:
    """A Unix time for reading, in UTC: ``2026-12-07 15:54:06Z``; every command shows
    times this way."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + "Z"


def size(n: float | None) -> str:
    """A number of bytes for reading, in binary units (``512 B``, ``1.5 MiB``); every
    command shows sizes this way. None (unknown) is ``-``."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def is_terminal(stream: Any = None) -> bool:
    """Whether ``stream`` (default stderr) is an interactive terminal."""
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def show_text(detail: dict[str, Any]) -> str:
    """An error-queue entry for reading: fields one per line (times as `when` shows them),
    the stub as indented JSON and the traceback as its own lines (each made human-safe),
    instead of one JSON string with ``\\n`` and ``\\"`` in it."""
    import json

    lines = []
    for key, value in detail.items():
        if key in ("stub", "traceback"):
            continue
        if key.endswith("_at") and isinstance(value, int | float) and value:
            value = when(value)
        lines.append(f"{key}: {human('-' if value is None else value)}")
    stub = detail.get("stub")
    if stub:
        try:
            pretty = json.dumps(json.loads(str(stub)), indent=2, ensure_ascii=False)
        except ValueError:
            pretty = str(stub)
        lines.append("stub:")
        lines += [f"  {human(line)}" for line in pretty.splitlines()]
    traceback = detail.get("traceback")
    if traceback:
        lines.append("traceback:")
        lines += [f"  {human(line)}" for line in str(traceback).splitlines()]
    return "\n".join(lines)
