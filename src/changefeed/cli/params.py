"""Click parameter types for the numbers commands take (offsets, ids, partitions, limits).

Each checks its value with `changefeed.identifiers.int64`, the one validator of 64-bit
numbers, so an argument beyond 64 bits is a one-line usage error (exit 2) instead of an
overflow deep in a database driver.
"""

from __future__ import annotations

import click

from changefeed.identifiers import InvalidValueError, int64


class Int64(click.ParamType):
    """An integer from ``minimum`` to 2^63-1, named ``what`` in errors."""

    name = "integer"

    def __init__(self, what: str, minimum: int = 0) -> None:
        self.what = what
        self.minimum = minimum

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = int(str(value).strip(), 10)
            except ValueError:
                self.fail(f"{value!r} is not an integer", param, ctx)
        try:
            return int64(number, self.what, self.minimum)
        except InvalidValueError as exc:
            self.fail(str(exc), param, ctx)


OFFSET = Int64("offset")
PARTITION = Int64("partition")
ENTRY_ID = Int64("id", minimum=1)
LIMIT = Int64("limit", minimum=1)
COUNT = Int64("count")
SAMPLE = Int64("sample size", minimum=1)
CHUNK = Int64("chunk size", minimum=1)
